"""LLaVA-1.5's `vicuna_v1` conversation template and its tokenization, shared by training,
evaluation and the demo.

    "{system} USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT:"

Token ids follow LLaVA's `tokenizer_image_token`: the prompt is split on `<image>`, each piece is
tokenized on its own (BOS kept on the first piece only), and each `<image>` becomes the image
token repeated once per vision feature (576 on LLaVA-1.5), as transformers' LLaVA expects. With the tokenizer of
`post_decoder.llama_tokenizer.load_tokenizer` the ids equal LLaVA's for any text (tests/test_tokenization_fidelity.py).
"""

from dataclasses import dataclass, field

from transformers import AddedToken

from ...errors import InputError

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# LLaVA's `llava_v1` differs from `vicuna_v1` in its system prompt only; HA-DPO's POPE evaluation
# of LLaVA-1.5 uses it, LLaVA's own evaluation scripts use `vicuna_v1`.
CONV_MODES = {
    "vicuna_v1": SYSTEM_PROMPT,
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
}
DEFAULT_CONV_MODE = "vicuna_v1"
IMAGE_TOKEN = "<image>"
USER, ASSISTANT = "USER", "ASSISTANT"
TURN_SEPARATOR, ANSWER_END = " ", "</s>"


@dataclass
class Conversation:
    """A vicuna_v1 conversation. The first user message carries the image as `<image>\\n`."""

    system: str = SYSTEM_PROMPT
    messages: list[tuple[str, str | None]] = field(default_factory=list)

    @classmethod
    def for_mode(cls, conv_mode: str = DEFAULT_CONV_MODE) -> "Conversation":
        """An empty conversation in one of LLaVA's `conv_templates` (`CONV_MODES`)."""
        if conv_mode not in CONV_MODES:
            raise InputError(f"unknown conversation mode {conv_mode!r}: choose one of {', '.join(CONV_MODES)}")
        return cls(system=CONV_MODES[conv_mode])

    def add_user(self, text: str, with_image: bool = False) -> "Conversation":
        """The image as `<image>\n` before `text`; alone (no line break) when `text` is empty, as LLaVA's
        `preprocess_multimodal` strips a turn that holds nothing but the image."""
        if with_image:
            text = f"{IMAGE_TOKEN}\n{text}" if text else IMAGE_TOKEN
        self.messages.append((USER, text))
        return self

    def add_assistant(self, text: str | None) -> "Conversation":
        """`None` leaves the turn open: the prompt then ends with "ASSISTANT:" for generation."""
        self.messages.append((ASSISTANT, text))
        return self

    def prompt(self) -> str:
        text = self.system + TURN_SEPARATOR
        for role, message in self.messages:
            if message:
                text += f"{role}: {message}" + (TURN_SEPARATOR if role == USER else ANSWER_END)
            else:
                text += f"{role}:"
        return text


def question_prompt(
    question: str, with_image: bool = True, suffix: str = "", conv_mode: str = DEFAULT_CONV_MODE
) -> str:
    """The single-turn prompt that POPE and the demo send: ends with "ASSISTANT:". The image is `<image>\n` before
    the question even when the question is empty, as LLaVA's evaluation builds it (only its training data
    preprocessing strips an image-only turn: `add_user`)."""
    text = question + suffix
    conversation = Conversation.for_mode(conv_mode)
    conversation.messages.append((USER, f"{IMAGE_TOKEN}\n{text}" if with_image else text))
    return conversation.add_assistant(None).prompt()


def tokenize_with_image(prompt: str, tokenizer, image_token_id: int, image_seq_length: int | list[int]) -> list[int]:
    """LLaVA's split-on-`<image>` tokenization, each `<image>` expanded to `image_seq_length` ids (a list: one
    count per `<image>`, in order)."""
    pieces = [tokenizer(piece).input_ids for piece in prompt.split(IMAGE_TOKEN)]
    counts = [image_seq_length] * (len(pieces) - 1) if isinstance(image_seq_length, int) else image_seq_length
    if len(counts) != len(pieces) - 1:
        raise ValueError(f"{len(counts)} image-token counts for {len(pieces) - 1} {IMAGE_TOKEN} in the prompt")
    bos = tokenizer.bos_token_id
    starts_with_bos = bool(pieces[0]) and pieces[0][0] == bos
    ids = pieces[0][:]
    for piece, count in zip(pieces[1:], counts):
        ids.extend([image_token_id] * count)
        ids.extend(piece[1:] if starts_with_bos and piece and piece[0] == bos else piece)
    return ids


def add_llava_tokens(tokenizer):
    """Add `<image>` and `<pad>` after the text vocabulary, as transformers' LLaVA conversion does."""
    tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer
