"""LLaVA instruction data for supervised fine-tuning of the block, tokenized as LLaVA-1.5's
`preprocess_v1` does (the vicuna_v1 template by default; `conv_mode="llava_v1"` changes the system prompt only).

Input: a JSON list of `{"id", "image" (optional, relative to `image_folder`), "conversations":
[{"from": "human" | "gpt", "value": str}, ...]}`.
- As LLaVA's `preprocess_multimodal`: `<image>` is taken out of its turn, which is stripped and
  starts again with `<image>\\n`. An image sample with no `<image>` gets one before its first question.
- A first turn from "gpt" is dropped, as LLaVA does; the rest must alternate human, gpt and end
  with an answer (LLaVA masks a sample ending with a question entirely: it is skipped here).
- Labels are IGNORE_INDEX (-100) except the answers and the `</s>` that closes each of them.
- A sample without an image is kept (the block passes it through) unless `keep_text_only=False`;
  either way it is counted.
- No sample left at all is an `InputError` that says why.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import (  # LLaVA's own data format, in LLaVA's template
    ANSWER_END,
    ASSISTANT,
    DEFAULT_CONV_MODE,
    IMAGE_TOKEN,
    USER,
    Conversation,
    tokenize_with_image,
)

from .images import load_image, with_readable_images
from .json_files import read_json
from .skips import SkipCounter
from .token_ids import IGNORE_INDEX, compact, expand_image_tokens, kept_length

ROLES = {"human": USER, "gpt": ASSISTANT}


@dataclass(frozen=True)
class SupervisedSample:
    sample_id: str
    image: str | None  # path of the image file; None for a text-only sample
    turns: tuple[tuple[str, str], ...]  # (USER | ASSISTANT, text), alternating, `<image>\n` in place
    source: str = ""


def _turns(conversations, has_image: bool) -> tuple[tuple[tuple[str, str], ...] | None, str]:
    """The sample's turns in template form, or (None, why they cannot be used)."""
    if not isinstance(conversations, list) or not all(
        isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)
        for turn in conversations
    ):
        return None, "malformed conversations (expected a list of {from, value} strings)"
    unknown = sorted({turn["from"] for turn in conversations} - set(ROLES))
    if unknown:
        return None, f"unknown role {unknown[0]!r}"
    if conversations and conversations[0]["from"] == "gpt":
        conversations = conversations[1:]
    turns = [(ROLES[turn["from"]], turn["value"]) for turn in conversations]
    if any(role != (USER, ASSISTANT)[number % 2] for number, (role, _) in enumerate(turns)):
        return None, "turns do not alternate human, gpt"
    if not turns:
        return None, "no answer"
    if turns[-1][0] == USER:  # LLaVA's preprocess_v1 masks such a sample entirely
        return None, "last question has no answer"
    images = sum(text.count(IMAGE_TOKEN) for _, text in turns)
    if images and not has_image:
        return None, "<image> in a sample without an image"
    if images > 1:
        return None, "more than one <image> for one image"
    if any(IMAGE_TOKEN in text for role, text in turns if role == ASSISTANT):
        return None, "<image> in an answer"
    if has_image and not images:
        turns[0] = (USER, IMAGE_TOKEN + turns[0][1])
    final = []
    for role, text in turns:
        if IMAGE_TOKEN in text:
            text = text.replace(IMAGE_TOKEN, "").strip()
            text = f"{IMAGE_TOKEN}\n{text}" if text else IMAGE_TOKEN
        if not text.strip():
            return None, "empty answer" if role == ASSISTANT else "empty question"
        final.append((role, text))
    return tuple(final), ""


def read_llava_samples(
    data_path: str, image_folder: str = "", keep_text_only: bool = True, skips: SkipCounter | None = None
) -> list[SupervisedSample]:
    """LLaVA's instruction json as samples; unusable entries are counted in `skips` (or stop a strict run)."""
    skips = skips if skips is not None else SkipCounter("LLaVA samples")
    data = read_json(data_path, "LLaVA instruction data")
    if not isinstance(data, list):
        raise InputError(
            f"{data_path}: expected a list of samples, found {type(data).__name__} (is this LLaVA instruction data?)"
        )
    samples = []
    for number, entry in enumerate(data):
        sample_id = str(entry["id"]) if isinstance(entry, dict) and "id" in entry else f"#{number}"
        if not isinstance(entry, dict):
            skips.skip(sample_id, "not an object", f"a {type(entry).__name__}", data_path)
            continue
        if "conversations" not in entry:
            skips.skip(sample_id, "missing key 'conversations'", source=data_path)
            continue
        image = entry.get("image")
        if image is not None and not (isinstance(image, str) and image):
            skips.skip(sample_id, "malformed entry", f"'image' is {image!r}", data_path)
            continue
        if image is None and not keep_text_only:
            skips.note("samples without an image (left out: keep_text_only is off)")
            continue
        turns, problem = _turns(entry["conversations"], image is not None)
        if turns is None:
            skips.skip(sample_id, problem, source=data_path)
            continue
        if image is None:
            skips.note("samples without an image (kept; the block passes them through)")
        if entry["conversations"][0]["from"] == "gpt":
            skips.note("first turns from gpt dropped (as LLaVA)")
        if image is not None and not any(IMAGE_TOKEN in turn["value"] for turn in entry["conversations"]):
            skips.note("image samples without <image> in the text (put before the first question)")
        path = os.path.join(image_folder, image) if image is not None else None
        samples.append(SupervisedSample(sample_id, path, turns, data_path))
    return samples


def _tokenize_after_answer(texts: list[str], tokenizer, image_token_id: int) -> list[list[int]]:
    """Ids of each text where it stands in a conversation: right after an answer's `</s>`. One
    batched tokenizer call for the texts without an image (the call itself costs more than the text)."""
    plain = [number for number, text in enumerate(texts) if IMAGE_TOKEN not in text]
    tokenized: list = [None] * len(texts)
    if plain:
        batch = tokenizer([ANSWER_END + texts[number] for number in plain], add_special_tokens=False).input_ids
        for number, ids in zip(plain, batch):
            tokenized[number] = ids
    for number, text in enumerate(texts):
        if tokenized[number] is None:
            tokenized[number] = tokenize_with_image(ANSWER_END + text, tokenizer, image_token_id, 1)[1:]  # no BOS
    if any(ids[:1] != [tokenizer.eos_token_id] for ids in tokenized):
        raise ValueError(f"the tokenizer does not read {ANSWER_END!r} as its EOS token")
    return [ids[1:] for ids in tokenized]


def _round_texts(turns, conv_mode: str) -> list[tuple[str, str]]:
    """Per round, the text that adds its question up to "ASSISTANT:", and up to its answer's `</s>`."""
    conversation, rounds, done = Conversation.for_mode(conv_mode), [], ""
    for question, answer in zip(turns[0::2], turns[1::2]):
        conversation.add_user(question[1]).add_assistant(None)
        instruction = conversation.prompt()
        conversation.messages[-1] = (ASSISTANT, answer[1])
        closed = conversation.prompt()
        if not (instruction.startswith(done) and closed.startswith(done)):
            raise AssertionError("the conversation template is not built round by round")
        rounds.append((instruction[len(done) :], closed[len(done) :]))
        done = closed
    return rounds


def conversation_ids_and_answer_spans(
    turns, tokenizer, image_token_id: int, conv_mode: str = DEFAULT_CONV_MODE
) -> tuple[list[int], list[tuple[int, int]]] | None:
    """Compact ids (one image token) of the whole conversation and each answer's [start, end),
    its `</s>` included; None when an answer's first token would merge with "ASSISTANT:" (no
    clean cut: LLaVA masks such a sample entirely and warns "tokenization mismatch").

    `turns` alternate (USER, text), (ASSISTANT, text) and end with an answer. The ids equal
    `tokenize_with_image` of the whole conversation (tested): tokens never merge across the
    special `</s>`, so each round (question, answer, `</s>`) is tokenized on its own, in its place
    (the first with BOS, the others right after a `</s>`), and each text once.
    """
    if len(turns) % 2 or any(role != (USER, ASSISTANT)[number % 2] for number, (role, _) in enumerate(turns)):
        raise ValueError("turns must alternate question, answer and end with an answer")
    rounds = _round_texts(turns, conv_mode)
    first = [tokenize_with_image(text, tokenizer, image_token_id, 1) for text in rounds[0]]
    later = _tokenize_after_answer([text for pair in rounds[1:] for text in pair], tokenizer, image_token_id)
    ids, spans = [], []
    for head, body in [first, *zip(later[0::2], later[1::2])]:
        if body[: len(head)] != head:
            return None
        spans.append((len(ids) + len(head), len(ids) + len(body)))
        ids.extend(body)
    return ids, spans


class SupervisedDataset(Dataset):
    """Tokenized at construction, so every length problem is counted before training starts;
    images are checked here (exists, PIL can decode it) and opened when an item is served.

    Items: `sample_id`, `input_ids` and `labels` (1-D long tensors, image tokens expanded) and
    `image` (RGB PIL image or None). A conversation longer than `model_max_length` is cut at the
    end; one left with no answer token (its loss would be undefined) is skipped.
    """

    def __init__(
        self,
        samples: list[SupervisedSample],
        tokenizer,
        image_token_id: int,
        image_seq_length: int,
        model_max_length: int,
        skips: SkipCounter | None = None,
        check_images: bool = True,
        conv_mode: str = DEFAULT_CONV_MODE,
    ):
        Conversation.for_mode(conv_mode)  # an unknown mode stops here, before any work
        self.image_token_id = image_token_id
        self.image_seq_length = image_seq_length
        self.conv_mode = conv_mode
        self.skips = skips if skips is not None else SkipCounter("LLaVA samples")
        self.items = []
        for sample in with_readable_images(samples, self.skips, check_images):
            item = self._tokenize(sample, tokenizer, model_max_length)
            if item is not None:
                self.items.append(item)
        self.skips.require_some(len(self.items), "LLaVA samples", (sample.source for sample in samples))
        self.skips.note("samples kept", len(self.items))
        self.skips.log()

    def _tokenize(self, sample: SupervisedSample, tokenizer, model_max_length: int):
        tokenized = conversation_ids_and_answer_spans(sample.turns, tokenizer, self.image_token_id, self.conv_mode)
        if tokenized is None:
            detail = "an answer's first token merges with 'ASSISTANT:'"
            self.skips.skip(sample.sample_id, "tokenization mismatch", detail, sample.source)
            return None
        ids, spans = compact(tokenized[0]), tokenized[1]
        images = int((ids == self.image_token_id).sum())
        if images != (sample.image is not None):  # the model pairs each image with its image tokens
            detail = f"{images} <image> in the text, {'an image' if sample.image else 'no image'} file"
            self.skips.skip(sample.sample_id, "image and <image> do not match", detail, sample.source)
            return None
        kept = kept_length(ids, self.image_token_id, self.image_seq_length, model_max_length)
        if int((ids[:kept] == self.image_token_id).sum()) != images:
            self.skips.skip(
                sample.sample_id,
                "image tokens cut by model_max_length",
                f"model_max_length is {model_max_length}",
                sample.source,
            )
            return None
        spans = [(start, min(end, kept)) for start, end in spans if start < kept]
        if not spans:
            detail = f"the first answer starts beyond token {model_max_length}"
            self.skips.skip(sample.sample_id, "no answer token within model_max_length", detail, sample.source)
            return None
        if kept < len(ids):
            self.skips.note("samples cut at model_max_length")
        return sample, ids[:kept], tuple(spans)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        sample, ids, spans = self.items[index]
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        for start, end in spans:
            labels[start:end] = ids[start:end]
        return {
            "sample_id": sample.sample_id,
            "input_ids": torch.from_numpy(expand_image_tokens(ids, self.image_token_id, self.image_seq_length)).long(),
            "labels": torch.from_numpy(expand_image_tokens(ids, self.image_token_id, self.image_seq_length, labels)),
            "image": load_image(sample.image, sample.sample_id, sample.source) if sample.image else None,
        }
