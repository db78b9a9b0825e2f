"""InstructBLIP's prompt and the family's other answers: LAVIS's token ids (checked with the real Llama-2
SentencePiece model, which Vicuna uses), the block's sizes, the checkpoint bookkeeping."""

import json
import re

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, InstructBlipConfig, LlamaConfig

from post_decoder.errors import InputError
from post_decoder.families.instructblip import INSTRUCTBLIP, InstructBlipPostDecoderForConditionalGeneration
from post_decoder.families.instructblip.tiny import (
    make_qformer_tokenizer,
    make_tiny_instructblip,
    train_language_tokenizer,
)
from post_decoder.family import family_for, family_for_conv_mode
from tests.helpers import shared_file

IMAGE_TOKEN_ID = 32001  # the hub's InstructBLIP-Vicuna: `<image>` after `[PAD]` (32000)
ANSWERS = ["Yes", "No, there is no car in the image.", "The image shows 2 people riding bikes near a red bus."]


@pytest.fixture(scope="module")
def llama2():
    """(transformers' tokenizer, SentencePiece itself) of Llama 2's tokenizer.model."""
    folder = shared_file("tokenizers", "llama2")
    return AutoTokenizer.from_pretrained(folder), spm.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")


def pope_questions(count: int) -> list[str]:
    with open(shared_file("pope", "coco_pope_adversarial.json")) as handle:
        return [json.loads(line)["text"] for line in handle][:count]


def test_the_prompt_is_the_question_itself_after_the_image():
    question = "Is there a snowboard in the image?"
    assert INSTRUCTBLIP.question_prompt(question) == "<image>Is there a snowboard in the image?"
    assert INSTRUCTBLIP.question_prompt(question, with_image=False, suffix=" Answer yes or no.") == (
        "Is there a snowboard in the image? Answer yes or no."
    )
    conversation = INSTRUCTBLIP.conversation().add_user(question, with_image=True).add_assistant("Yes")
    assert conversation.prompt() == "<image>Is there a snowboard in the image? Yes</s>"
    with pytest.raises(InputError, match="one question and one answer: it has no multi-turn template"):
        conversation.add_user("And a car?")
    assert family_for_conv_mode("instructblip") is INSTRUCTBLIP
    with pytest.raises(InputError, match="unknown conversation mode 'vicuna_v1': choose one of instructblip"):
        INSTRUCTBLIP.conversation("vicuna_v1")


def test_prompt_ids_are_lavis_query_tokens_then_eos_as_bos_then_the_question(llama2):
    """LAVIS's InstructBLIP-Vicuna tokenizer has bos_token "</s>" (id 2) and no chat template: the language model
    reads the 32 query outputs, `</s>`, the question's SentencePiece ids (HA-DPO's POPE prompt is the question)."""
    tokenizer, sentencepiece = llama2
    for question in pope_questions(6):
        ids = INSTRUCTBLIP.tokenize_with_image(INSTRUCTBLIP.question_prompt(question), tokenizer, IMAGE_TOKEN_ID, 32)
        assert ids == [IMAGE_TOKEN_ID] * 32 + [2] + sentencepiece.encode(question)
    text_only = INSTRUCTBLIP.tokenize_with_image("Hello there", tokenizer, IMAGE_TOKEN_ID, 32)
    assert text_only == [2] + sentencepiece.encode("Hello there")


def test_an_answer_gets_the_ids_lavis_gives_it_alone_then_eos(llama2):
    """LAVIS tokenizes the answer apart (`answer + "</s>"`, its leading BOS dropped): the conversation's ids after
    the prompt's are exactly those, so DPO's chosen and rejected continue the same prompt ids."""
    tokenizer, sentencepiece = llama2
    question = pope_questions(1)[0]
    prompt = INSTRUCTBLIP.tokenize_with_image(INSTRUCTBLIP.question_prompt(question), tokenizer, IMAGE_TOKEN_ID, 1)
    for answer in ANSWERS:
        text = INSTRUCTBLIP.conversation().add_user(question, with_image=True).add_assistant(answer).prompt()
        whole = INSTRUCTBLIP.tokenize_with_image(text, tokenizer, IMAGE_TOKEN_ID, 1)
        assert whole[: len(prompt)] == prompt
        assert whole[len(prompt) :] == sentencepiece.encode(answer) + [2]


def test_an_image_token_inside_the_prompt_is_refused(llama2):
    tokenizer, _ = llama2
    with pytest.raises(ValueError, match="has its one <image> at the start, not inside"):
        INSTRUCTBLIP.tokenize_with_image("Look: <image>", tokenizer, IMAGE_TOKEN_ID, 32)


def test_block_sizes_at_full_size_read_the_vision_encoder_or_the_projection():
    config = InstructBlipConfig(text_config=LlamaConfig().to_dict())  # EVA ViT-g and a 7B Llama
    assert INSTRUCTBLIP.block_sizes(config, "vision_tower") == {
        "hidden_size": 4096,
        "vision_hidden_size": 1408,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
    }
    assert INSTRUCTBLIP.block_sizes(config, "projector")["vision_hidden_size"] == 4096
    assert INSTRUCTBLIP.image_token_count(config) == config.num_query_tokens == 32
    with pytest.raises(InputError, match="has no image_token_index"):
        INSTRUCTBLIP.image_token_id(config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("instructblip_family")
    tokenizer = train_language_tokenizer(str(directory / "llm"))
    return make_tiny_instructblip(tokenizer, make_qformer_tokenizer(str(directory / "qformer")))


def test_the_registry_finds_instructblip_from_a_model_or_a_config_json(tiny):
    assert family_for(tiny) is family_for({"model_type": "instructblip_post_decoder"}) is INSTRUCTBLIP
    assert INSTRUCTBLIP.claims({"model_type": "instructblip"})
    assert INSTRUCTBLIP.image_token_id(tiny.config) == tiny.config.image_token_index


def test_lora_targets_are_the_llms_linear_layers_only(tiny):
    names = [name for name, _ in tiny.named_modules()]
    targeted = [name for name in names if re.fullmatch(INSTRUCTBLIP.lora_targets, name)]
    per_layer = 7  # q, k, v, o, gate, up, down
    assert len(targeted) == per_layer * tiny.config.text_config.num_hidden_layers
    assert all(name.startswith("language_model.model.layers.") for name in targeted)
    assert all(tiny.get_submodule(name) is not None for name in INSTRUCTBLIP.modules_trained_with_lora)
    assert INSTRUCTBLIP.head_key in tiny.state_dict()


def test_checkpoint_bookkeeping_keeps_transformers_names(tiny):
    keys = list(tiny.state_dict())
    layout = INSTRUCTBLIP.key_layout({"model_type": "instructblip"}, keys, "here")
    assert all(layout.to_ours(key) == key == layout.to_checkpoint(key) for key in keys)
    with pytest.raises(InputError, match="here is not an InstructBLIP checkpoint"):
        INSTRUCTBLIP.key_layout({"model_type": "instructblip"}, ["lm_head.weight"], "here")
    block = {"model_type": "post_decoder", "variant": "post_interaction"}
    raw = {"model_type": "instructblip", "architectures": ["InstructBlipForConditionalGeneration"]}
    assert INSTRUCTBLIP.config_with_block(raw, block) == {
        "model_type": "instructblip_post_decoder",
        "architectures": [InstructBlipPostDecoderForConditionalGeneration.__name__],
        "post_decoder_config": block,
    }
