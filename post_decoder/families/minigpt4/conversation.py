"""MiniGPT-4's prompt templates and their tokenization, shared by training, evaluation and the demo.

From Vision-CAIR/MiniGPT-4 (and HA-DPO's copy of it, ha_dpo/models/minigpt4):
  - `minigpt4_llama2`: the Llama-2 version's `prompt_template` ('[INST] {} [/INST] ', eval_configs/
    minigpt4_llama2_eval.yaml) around '<Img><ImageHere></Img> {question}', answers ending in `end_sym` '</s>'.
    HA-DPO's DPO training of MiniGPT-4 uses exactly this (mini_gpt4_dpo.py): the default.
  - `minigpt4_llama2_chat`: `CONV_VISION_LLama2`, the demo's and HA-DPO's POPE evaluation's conversation (a system
    text, then '<s>[INST] <Img><ImageHere></Img> {question} [/INST] ').
  - `minigpt4_vicuna0` / `minigpt4_vicuna0_chat`: the Vicuna version's '###Human: {} ###Assistant: ' (end_sym '###')
    and `CONV_VISION_Vicuna0`.

Token ids follow MiniGPT-4's `prompt_wrap` / `get_context_emb` and its training: BOS, then each piece of text
tokenized on its own without special tokens, the pieces being split at `<ImageHere>` (each becomes the image
token, once per image token) and right after the assistant's turn marker ('[/INST] ', '###Assistant: '), where
MiniGPT-4 tokenizes the answer (plus `end_sym`) apart from its prompt.
"""

import re
from dataclasses import dataclass, field

from transformers import AddedToken

from ...errors import InputError

IMAGE_TOKEN = "<ImageHere>"
IMAGE_TURN = "<Img><ImageHere></Img> "  # the first user turn's image, before its question (a space between)
SYSTEM_PROMPT = (
    "Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions."
)


@dataclass(frozen=True)
class Template:
    prefix: str  # before the first turn
    user: str  # before each question
    assistant: str  # between the question and the answer (the prompt for generation ends with it)
    answer_end: str  # after each answer (MiniGPT-4's end_sym)
    next_turn: str = ""  # before each later question


CONV_MODES = {
    "minigpt4_llama2": Template("", "[INST] ", " [/INST] ", "</s>", next_turn="<s>"),
    "minigpt4_llama2_chat": Template(SYSTEM_PROMPT, "<s>[INST] ", " [/INST] ", ""),
    "minigpt4_vicuna0": Template("", "###Human: ", " ###Assistant: ", "###", next_turn="<s>"),
    "minigpt4_vicuna0_chat": Template(SYSTEM_PROMPT + "###", "Human: ", "###Assistant: ", "###"),
}
DEFAULT_CONV_MODE = "minigpt4_llama2"
VICUNA_CONV_MODE = "minigpt4_vicuna0"  # the Vicuna version's default (`default_conv_mode_for`)
# Where MiniGPT-4 starts tokenizing anew: after the assistant's marker (the answer is tokenized on its own).
_ANSWER_STARTS = re.compile(r"(?<=\[/INST\] )|(?<=###Assistant: )")


@dataclass
class Conversation:
    """A MiniGPT-4 conversation; the first user message carries the image as `<Img><ImageHere></Img> `."""

    template: Template = CONV_MODES[DEFAULT_CONV_MODE]
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def for_mode(cls, conv_mode: str = DEFAULT_CONV_MODE) -> "Conversation":
        if conv_mode not in CONV_MODES:
            raise InputError(f"unknown conversation mode {conv_mode!r}: choose one of {', '.join(CONV_MODES)}")
        return cls(template=CONV_MODES[conv_mode])

    def add_user(self, text: str, with_image: bool = False) -> "Conversation":
        self.messages.append(("user", IMAGE_TURN + text if with_image else text))
        return self

    def add_assistant(self, text: str | None) -> "Conversation":
        """`None` leaves the turn open: the prompt then ends with the assistant's marker, for generation."""
        self.messages.append(("assistant", text))
        return self

    def prompt(self) -> str:
        template, text, turns = self.template, self.template.prefix, 0
        for role, message in self.messages:
            if role == "user":
                text += (template.next_turn if turns else "") + template.user + message
                turns += 1
            else:
                text += template.assistant + (message + template.answer_end if message is not None else "")
        return text


def question_prompt(
    question: str, with_image: bool = True, suffix: str = "", conv_mode: str = DEFAULT_CONV_MODE
) -> str:
    """The single-turn prompt that POPE and the demo send: ends with the assistant's marker."""
    conversation = Conversation.for_mode(conv_mode).add_user(question + suffix, with_image=with_image)
    return conversation.add_assistant(None).prompt()


def tokenize_with_image(prompt: str, tokenizer, image_token_id: int, image_tokens: int | list[int]) -> list[int]:
    """MiniGPT-4's ids: BOS, each text piece tokenized on its own (no special tokens added), each `<ImageHere>`
    expanded to `image_tokens` ids (a list: one count per `<ImageHere>`, in order)."""
    pieces = prompt.split(IMAGE_TOKEN)
    counts = [image_tokens] * (len(pieces) - 1) if isinstance(image_tokens, int) else list(image_tokens)
    if len(counts) != len(pieces) - 1:
        raise ValueError(f"{len(counts)} image-token counts for {len(pieces) - 1} {IMAGE_TOKEN} in the prompt")
    ids = [tokenizer.bos_token_id]
    for index, piece in enumerate(pieces):
        if index:
            ids.extend([image_token_id] * counts[index - 1])
        for part in _ANSWER_STARTS.split(piece):
            if part:
                ids.extend(tokenizer(part, add_special_tokens=False).input_ids)
    return ids


def add_minigpt4_tokens(tokenizer):
    """Add `<ImageHere>` (the image token) and `<pad>` after the text vocabulary (MiniGPT-4 itself pads with
    '$$' and splices image embeddings in by position; transformers' BLIP-2 needs an image token id)."""
    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer
