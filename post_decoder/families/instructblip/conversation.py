"""InstructBLIP's prompt: the question itself, as LAVIS's InstructBLIP and HA-DPO's evaluation and training send it.

There is no chat template. LAVIS (`blip2_vicuna_instruct.py`) gives the language model the image's 32 query
outputs, then the tokenized prompt, then (training) the answer tokenized on its own with `</s>` after it; its
Vicuna tokenizer has `bos_token` set to `</s>`, so the prompt's first token is `</s>` (id 2), not `<s>`.
HA-DPO's InstructBLIP POPE evaluation (`pope_eval.py`) sends the POPE question as the prompt, unchanged. The
Q-Former reads the same prompt text (`qformer_input_ids`, BERT's tokenizer).

As text, with `<image>` standing for the 32 image tokens (transformers' InstructBLIP puts them first, before the
prompt's first token, as LAVIS does):

    "<image>{question}"                 (open for the answer)
    "<image>{question} {answer}</s>"    (a training conversation)

`tokenize_with_image` gives `[image] * 32 + [</s>] + ids(question)`, then `ids(answer) + [</s>]`: the space before
the answer starts its first word, so the answer's ids are those LAVIS gives it alone.
"""

from dataclasses import dataclass, field

from ...errors import InputError

IMAGE_TOKEN = "<image>"
PROMPT_START = "</s>"  # LAVIS's InstructBLIP-Vicuna tokenizer: bos_token "</s>" starts every prompt
ANSWER_END = "</s>"
DEFAULT_CONV_MODE = "instructblip"
CONV_MODES = {DEFAULT_CONV_MODE: "the question itself (LAVIS's and HA-DPO's InstructBLIP prompt)"}


@dataclass
class Conversation:
    """A single-turn InstructBLIP prompt: the image, the question, the answer (`add_user` once, `add_assistant`
    once, as LLaVA's conversation is used)."""

    messages: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def for_mode(cls, conv_mode: str = DEFAULT_CONV_MODE) -> "Conversation":
        if conv_mode not in CONV_MODES:
            raise InputError(f"unknown conversation mode {conv_mode!r}: choose one of {', '.join(CONV_MODES)}")
        return cls()

    def add_user(self, text: str, with_image: bool = False) -> "Conversation":
        if self.messages:
            raise InputError("InstructBLIP's prompt has one question and one answer: it has no multi-turn template")
        self.messages.append(("user", f"{IMAGE_TOKEN}{text}" if with_image else text))
        return self

    def add_assistant(self, text: str | None) -> "Conversation":
        """`None` leaves the prompt open for generation (it ends with the question)."""
        if len(self.messages) != 1:
            raise InputError("InstructBLIP's prompt takes one question, then one answer")
        self.messages.append(("assistant", text))
        return self

    def prompt(self) -> str:
        text = ""
        for role, message in self.messages:
            if role == "user":
                text += message
            elif message:
                text += f" {message}{ANSWER_END}"
        return text


def question_prompt(
    question: str, with_image: bool = True, suffix: str = "", conv_mode: str = DEFAULT_CONV_MODE
) -> str:
    """The prompt POPE and the demo send: the question (with `suffix`), after the image."""
    return Conversation.for_mode(conv_mode).add_user(question + suffix, with_image=with_image).prompt()


def tokenize_with_image(prompt: str, tokenizer, image_token_id: int, image_tokens: int | list[int]) -> list[int]:
    """`[image_token_id] * image_tokens` for the leading `<image>`, then `</s>` and the rest of the prompt's ids
    (the text is tokenized without the tokenizer's own special tokens: LAVIS's prompt start is put here, whatever
    a checkpoint's tokenizer would add). An answer after the question (" {answer}</s>") follows as its own ids."""
    with_image = prompt.startswith(IMAGE_TOKEN)
    text = prompt[len(IMAGE_TOKEN) :] if with_image else prompt
    if IMAGE_TOKEN in text:
        raise ValueError(f"InstructBLIP's prompt has its one {IMAGE_TOKEN} at the start, not inside: {prompt!r}")
    counts = [image_tokens] if isinstance(image_tokens, int) else list(image_tokens)
    if with_image and len(counts) != 1:
        raise ValueError(f"{len(counts)} image-token counts for the one {IMAGE_TOKEN} of an InstructBLIP prompt")
    start = tokenizer.convert_tokens_to_ids(PROMPT_START)
    ids = [image_token_id] * counts[0] if with_image else []
    return ids + [start] + tokenizer(text, add_special_tokens=False).input_ids
