import pytest

from post_decoder.families.llava.conversation import (
    SYSTEM_PROMPT,
    Conversation,
    add_llava_tokens,
    question_prompt,
    tokenize_with_image,
)
from tests.helpers import shared_file

LLAVA_IMAGE_PLACEHOLDER = -200  # LLaVA's IMAGE_TOKEN_INDEX


def test_single_turn_prompt_is_llava_1_5_vicuna_v1():
    assert question_prompt("Is there a dog in the image?") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nIs there a dog in the image? ASSISTANT:"
    )
    suffix = "\nAnswer the question using a single word or phrase."
    assert question_prompt("Is there a dog?", suffix=suffix).endswith(
        f"USER: <image>\nIs there a dog?{suffix} ASSISTANT:"
    )


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
        " A leading space,  a run of  spaces, a trailing one ",
        "\u00a0non-breaking, emoji \U0001f436, </s> and ASSISTANT: inside",
    ],
)
def test_ids_equal_llava_split_on_image_logic_with_the_real_tokenizer(question):
    import sentencepiece as spm

    from post_decoder.families.llava.tokenizer import load_tokenizer

    folder = shared_file("tokenizers", "llama2")
    tokenizer = add_llava_tokens(load_tokenizer(folder))
    processor = spm.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (image_token_id, tokenizer.pad_token_id) == (32000, 32001)

    prompt = question_prompt(question)
    ours = tokenize_with_image(prompt, tokenizer, image_token_id, image_seq_length=576)
    start = ours.index(image_token_id)
    assert ours[start : start + 576] == [image_token_id] * 576
    collapsed = ours[:start] + [LLAVA_IMAGE_PLACEHOLDER] + ours[start + 576 :]
    if "</s>" not in question:  # raw SentencePiece does not know special tokens (tests/test_tokenization_fidelity.py)
        assert collapsed == llava_tokenizer_image_token(prompt, processor.encode, bos_id=1)
    assert ours[0] == 1 and image_token_id not in ours[start + 576 :]
    assert (2 in ours) == ("</s>" in question)  # a special token in the text is split out as LLaVA's tokenizer does


def test_a_turn_that_is_only_the_image_keeps_the_space_before_assistant():
    from post_decoder.families.llava.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(shared_file("tokenizers", "llama2"))
    conversation = Conversation()
    conversation.messages.append(("USER", "<image>"))
    prompt = conversation.add_assistant(None).prompt()
    assert prompt.endswith("USER: <image> ASSISTANT:")
    # LLaVA's ids after the image: " ASSISTANT:" on its own, with SentencePiece's dummy prefix: ▁ then ▁A SS IST ANT :
    assert tokenize_with_image(prompt, tokenizer, 32000, 1)[-7:] == [32000, 29871, 319, 1799, 9047, 13566, 29901]


def test_a_prompt_without_an_image_is_plain_tokenization(llava_tokenizer):
    prompt = question_prompt("Hello?", with_image=False)
    assert tokenize_with_image(prompt, llava_tokenizer, 999, 16) == llava_tokenizer(prompt).input_ids


def test_every_mode_has_llava_s_system_prompt_and_an_unknown_one_is_named():
    from post_decoder.errors import InputError

    assert question_prompt("Q?", conv_mode="llava_v1").startswith("A chat between a curious human and an artificial")
    assert question_prompt("Q?", conv_mode="vicuna_v1").startswith("A chat between a curious user and an artificial")
    with pytest.raises(InputError, match="unknown conversation mode 'v2': choose one of vicuna_v1, llava_v1"):
        Conversation.for_mode("v2")
