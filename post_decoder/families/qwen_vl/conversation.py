"""Qwen-VL's prompt: its chat template (ChatML), shared by training, POPE and the demo.

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n

(one line here per turn; the text has no line breaks but the `\\n`s). This is what the Instruct models' own
`chat_template` renders for a message whose content is an image then its text, with
`add_generation_prompt=True` for an open assistant turn: Qwen2-VL and Qwen2.5-VL add the default system
message above when a conversation has none (`qwen2_vl`), Qwen3-VL adds none (`qwen3_vl`). An answer ends with
`<|im_end|>`, the models' end of turn and EOS.

Token ids: each `<|image_pad|>` becomes the image token repeated once per merged patch of its image (its
count from the processor's `image_grid_thw`), as Qwen's processor does. The placeholder is a special token,
so the text around it tokenizes on its own: splitting there gives the ids of the whole (tested).
"""

from dataclasses import dataclass, field

from ...errors import InputError

DEFAULT_SYSTEM = "You are a helpful assistant."
CONV_MODES = {"qwen2_vl": DEFAULT_SYSTEM, "qwen3_vl": None}  # the system message a conversation starts with
IMAGE_PAD, VISION_START, VISION_END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"
IMAGE = VISION_START + IMAGE_PAD + VISION_END
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
USER, ASSISTANT = "user", "assistant"


@dataclass
class Conversation:
    """A ChatML conversation; a user turn with an image starts with the image."""

    system: str | None = DEFAULT_SYSTEM
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def for_mode(cls, conv_mode: str) -> "Conversation":
        if conv_mode not in CONV_MODES:
            raise InputError(f"unknown conversation mode {conv_mode!r}: choose one of {', '.join(CONV_MODES)}")
        return cls(system=CONV_MODES[conv_mode])

    def add_user(self, text: str, with_image: bool = False) -> "Conversation":
        self.messages.append((USER, IMAGE + text if with_image else text))
        return self

    def add_assistant(self, text: str | None) -> "Conversation":
        """`None` leaves the turn open: the prompt then ends with "<|im_start|>assistant\\n" for generation."""
        self.messages.append((ASSISTANT, text))
        return self

    def prompt(self) -> str:
        turns = [] if self.system is None else [("system", self.system)]
        text = ""
        for role, message in turns + self.messages:
            text += f"{TURN_START}{role}\n"
            if message is not None:
                text += f"{message}{TURN_END}\n"
        return text


def question_prompt(question: str, with_image: bool = True, suffix: str = "", conv_mode: str = "qwen2_vl") -> str:
    """The single-turn prompt that POPE and the demo send, open for the answer."""
    conversation = Conversation.for_mode(conv_mode).add_user(question + suffix, with_image=with_image)
    return conversation.add_assistant(None).prompt()


def tokenize_with_image(prompt: str, tokenizer, image_token_id: int, image_tokens: int | list[int]) -> list[int]:
    """Token ids of `prompt`, each `<|image_pad|>` expanded to `image_tokens` image ids (a list: one count per
    image, in order)."""
    pieces = prompt.split(IMAGE_PAD)
    counts = [image_tokens] * (len(pieces) - 1) if isinstance(image_tokens, int) else list(image_tokens)
    if len(counts) != len(pieces) - 1:
        raise ValueError(f"{len(counts)} image-token counts for {len(pieces) - 1} {IMAGE_PAD} in the prompt")
    ids = tokenizer(pieces[0], add_special_tokens=False).input_ids if pieces[0] else []
    for piece, count in zip(pieces[1:], counts):
        ids.extend([image_token_id] * count)
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False).input_ids)
    return ids
