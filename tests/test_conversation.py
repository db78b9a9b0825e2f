import pytest

from post_decoder.conversation import (
    SYSTEM_PROMPT,
    Conversation,
    add_llava_tokens,
    question_prompt,
    tokenize_with_image,
)
from tests.conftest import shared_file

LLAVA_IMAGE_PLACEHOLDER = -200  # LLaVA's IMAGE_TOKEN_INDEX


def test_single_turn_prompt_is_llava_1_5_vicuna_v1():
    assert question_prompt("Is there a dog in the image?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a dog in the image? ASSISTANT:"
    )
    suffix = "\nAnswer the question using a single word or phrase."
    assert question_prompt("Is there a dog?", suffix=suffix).endswith(f"USER: <image>\nIs there a dog?{suffix} ASSISTANT:")


def test_multi_turn_prompt_closes_answers_with_eos():
    conversation = Conversation().add_user("What is this?", with_image=True).add_assistant("A dog.")
    conversation.add_user("What colour is it?").add_assistant(None)
    assert conversation.prompt() == (
        f"{SYSTEM_PROMPT} USER: <image>\nWhat is this? ASSISTANT: A dog.</s>USER: What colour is it? ASSISTANT:"
    )


def llava_tokenizer_image_token(prompt, encode, bos_id):
    """An independent re-statement of LLaVA's `tokenizer_image_token` over raw SentencePiece
    (what LLaVA's slow tokenizer produced for text without special tokens)."""
    chunks = [[bos_id] + encode(chunk) for chunk in prompt.split("<image>")]
    ids = [bos_id]
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(LLAVA_IMAGE_PLACEHOLDER)
        ids.extend(chunk[1:])
    return ids


@pytest.mark.parametrize(
    "question",
    [
        "Is there a dog in the image?",
        "Is there a traffic light in the image?\nAnswer the question using a single word or phrase.",
        "Describe this image in detail, please: what's on the left?",
        "Tabs\tand\nnew lines; digits 12,345.",
    ],
)
def test_ids_equal_llava_split_on_image_logic_with_the_real_tokenizer(question):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = shared_file("tokenizers", "llama2")
    tokenizer = add_llava_tokens(AutoTokenizer.from_pretrained(folder))
    processor = spm.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (image_token_id, tokenizer.pad_token_id) == (32000, 32001)

    prompt = question_prompt(question)
    ours = tokenize_with_image(prompt, tokenizer, image_token_id, image_seq_length=576)
    start = ours.index(image_token_id)
    assert ours[start : start + 576] == [image_token_id] * 576
    collapsed = ours[:start] + [LLAVA_IMAGE_PLACEHOLDER] + ours[start + 576 :]
    assert collapsed == llava_tokenizer_image_token(prompt, processor.encode, bos_id=1)
    assert ours[0] == 1 and image_token_id not in ours[start + 576 :]


def test_a_prompt_without_an_image_is_plain_tokenization(llava_tokenizer):
    prompt = question_prompt("Hello?", with_image=False)
    assert tokenize_with_image(prompt, llava_tokenizer, 999, 16) == llava_tokenizer(prompt).input_ids


def test_every_official_pope_prompt_tokenizes_as_llava_did():
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = shared_file("tokenizers", "llama2")
    tokenizer = add_llava_tokens(AutoTokenizer.from_pretrained(folder))
    processor = spm.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
    questions = set()
    for name in ("random", "popular", "adversarial"):
        with open(shared_file("pope", f"coco_pope_{name}.json")) as handle:
            questions.update(json.loads(line)["text"] for line in handle if line.strip())
    assert len(questions) > 50
    for question in sorted(questions):
        for suffix in ("", "\nAnswer the question using a single word or phrase."):
            prompt = question_prompt(question, suffix=suffix)
            ours = tokenize_with_image(prompt, tokenizer, 32000, image_seq_length=1)
            ours = [LLAVA_IMAGE_PLACEHOLDER if token == 32000 else token for token in ours]
            assert ours == llava_tokenizer_image_token(prompt, processor.encode, bos_id=1), prompt
