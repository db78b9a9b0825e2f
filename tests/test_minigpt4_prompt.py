"""MiniGPT-4's prompts: the strings its own code builds, and its token ids, which training, POPE and the demo share.

The expected strings were printed by MiniGPT-4's own `Conversation.get_prompt` (HA-DPO's copy,
ha_dpo/models/minigpt4/minigpt4/conversation/conversation.py, as pope_eval.py fills it) and by its eval configs'
`prompt_template.format("<Img><ImageHere></Img> " + question)` (mini_gpt4_dpo.py's training prompt).
"""

import pytest

from ha_dpo.data.preference_data import prompt_and_answer_ids
from post_decoder.families.llava.tokenizer import load_tokenizer
from post_decoder.families.minigpt4.conversation import (
    Conversation,
    add_minigpt4_tokens,
    question_prompt,
    tokenize_with_image,
)
from post_decoder.family import family_for, family_for_conv_mode
from tests.helpers import shared_file

SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. "
    "Please answer my questions."
)
EXPECTED_PROMPTS = {
    "minigpt4_llama2": "[INST] <Img><ImageHere></Img> Is there a dog? [/INST] ",
    "minigpt4_llama2_chat": SYSTEM + "<s>[INST] <Img><ImageHere></Img> Is there a dog? [/INST] ",
    "minigpt4_vicuna0": "###Human: <Img><ImageHere></Img> Is there a dog? ###Assistant: ",
    "minigpt4_vicuna0_chat": SYSTEM + "###Human: <Img><ImageHere></Img> Is there a dog?###Assistant: ",
}
IMAGE = 32000


@pytest.fixture(scope="module")
def llama2_tokenizer():
    return add_minigpt4_tokens(load_tokenizer(shared_file("tokenizers", "llama2")))


@pytest.mark.parametrize("conv_mode", list(EXPECTED_PROMPTS))
def test_prompts_are_minigpt4s_own(conv_mode):
    assert question_prompt("Is there a dog?", conv_mode=conv_mode) == EXPECTED_PROMPTS[conv_mode]
    assert family_for_conv_mode(conv_mode) is family_for("minigpt4")
    assert family_for("minigpt4").default_conv_mode == "minigpt4_llama2"  # HA-DPO's MiniGPT-4 (Llama-2-chat)


def test_a_conversation_of_two_turns_follows_minigpt4s_training_layout():
    """MiniGPT-4's tokenize_conversation: each answer ends with end_sym, each later question starts with BOS."""
    conversation = Conversation.for_mode("minigpt4_llama2").add_user("What is it?", with_image=True)
    conversation.add_assistant("A dog.").add_user("Is it big?").add_assistant(None)
    assert (
        conversation.prompt()
        == "[INST] <Img><ImageHere></Img> What is it? [/INST] A dog.</s><s>[INST] Is it big? [/INST] "
    )


def test_token_ids_are_minigpt4s_prompt_wrap(llama2_tokenizer):
    """BOS, then each piece on its own without special tokens (MiniGPT-4's prompt_wrap and get_context_emb), the image
    64 times for the Llama-2 version (2 here): Llama 2's `▁[ INST ]` (518 25580 29962), `▁[ / INST ]`, and the
    template's trailing space as its own `▁` (29871), where the answer's ids start apart from it."""
    ids = tokenize_with_image(EXPECTED_PROMPTS["minigpt4_llama2"], llama2_tokenizer, IMAGE, 2)
    assert ids == [
        1, 518, 25580, 29962, 529, 25518, 29958, IMAGE, IMAGE, 1533, 25518, 29958,
        1317, 727, 263, 11203, 29973, 518, 29914, 25580, 29962, 29871,
    ]  # fmt: skip
    chat = tokenize_with_image(EXPECTED_PROMPTS["minigpt4_llama2_chat"], llama2_tokenizer, IMAGE, 1)
    assert chat[:2] == [1, 25538] and chat.count(1) == 2  # "Give ..."; the template's "<s>" is BOS, not text


def test_a_preference_pair_answer_is_minigpt4s_answer_plus_end_sym(llama2_tokenizer):
    """HA-DPO's MiniGPT-4 DPO tokenizes `answer + end_sym` on its own after the prompt: so do the pairs."""
    prompt, answer = prompt_and_answer_ids(
        "Is there a dog?", "Yes, there is a dog.", True, llama2_tokenizer, IMAGE, conv_mode="minigpt4_llama2"
    )
    assert prompt == tokenize_with_image(EXPECTED_PROMPTS["minigpt4_llama2"], llama2_tokenizer, IMAGE, 1)
    assert answer == llama2_tokenizer("Yes, there is a dog.</s>", add_special_tokens=False).input_ids
    assert answer == [3869, 29892, 727, 338, 263, 11203, 29889, 2]
