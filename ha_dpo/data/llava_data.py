"""LLaVA-format instruction data for supervised fine-tuning of the block, in the model family's own template:
LLaVA-1.5's `preprocess_v1` (the vicuna_v1 template by default; `conv_mode="llava_v1"` changes the system prompt
only), Qwen-VL's chat template (an image before its question's text, as Qwen's fine-tuning code builds the
messages).

Input: a JSON list of `{"id", "image" (optional, relative to `image_folder`), "conversations":
[{"from": "human" | "gpt", "value": str}, ...]}` (the format LLaVA's and Qwen-VL's fine-tuning code read).
- As LLaVA's `preprocess_multimodal`: `<image>` is taken out of its turn, which is stripped and
  starts again with `<image>\n` (the turns keep this form; the template then places the image its own way).
  An image sample with no `<image>` gets one before its first question.
- A first turn from "gpt" is dropped, as LLaVA does; the rest must alternate human, gpt and end
  with an answer (LLaVA masks a sample ending with a question entirely: it is skipped here).
- Labels are IGNORE_INDEX (-100) except the assistant turns: each answer and what closes its turn in the
  template (LLaVA-1.5: `</s>`; Qwen-VL: `<|im_end|>` and the line break after it, as Qwen's fine-tuning code).
- A sample without an image is kept (the block passes it through) unless `keep_text_only=False`;
  either way it is counted.
- No sample left at all is an `InputError` that says why.
"""

import copy
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from post_decoder.errors import InputError

# LLaVA's data format: the `<image>` marker and the roles of a sample's turns (not a template: the model
# family's conversation renders them).
from post_decoder.families.llava.conversation import ASSISTANT, IMAGE_TOKEN, USER
from post_decoder.family import family_for_conv_mode

from .image_tokens import ImageTokens
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


def _after_end(ids: list[int], eos: int) -> list[int]:
    """The ids after the first EOS (and whatever the tokenizer put before it: LLaVA's BOS)."""
    return ids[ids.index(eos) + 1 :] if eos in ids else []


def _tokenize_after_answer(texts: list[tuple[str, bool]], tokenizer, template, image_token_id: int) -> list[list[int]]:
    """Ids of each (text, holds an image) where it stands in a conversation: after a closed answer turn. Each is
    tokenized behind the EOS (LLaVA's `</s>`, Qwen's `<|im_end|>`: a special token no text merges across),
    which gives the ids it has in place. One batched tokenizer call for the texts without an image (the call
    itself costs more than the text)."""
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    plain = [number for number, (_, image) in enumerate(texts) if not image]
    tokenized: list = [None] * len(texts)
    if plain:
        batch = tokenizer([eos + texts[number][0] for number in plain], add_special_tokens=False).input_ids
        for number, ids in zip(plain, batch):
            tokenized[number] = ids
        if any(ids[:1] != [eos_id] for ids in batch):
            raise ValueError(f"the tokenizer does not read {eos!r} as its EOS token")
    for number, (text, image) in enumerate(texts):
        if image:
            tokenized[number] = [eos_id] + _after_end(
                template.tokenize_with_image(eos + text, tokenizer, image_token_id, 1), eos_id
            )
    return [ids[1:] for ids in tokenized]


def _template_turn(text: str) -> tuple[str, bool]:
    """A user turn of the data (`<image>\n` first where it has the image) as (text, with the image)."""
    if IMAGE_TOKEN not in text:
        return text, False
    return text.replace(IMAGE_TOKEN, "").strip(), True


def _round_texts(turns, template, conv_mode: str | None) -> list[tuple[str, str, bool]]:
    """Per round, the text that adds its question up to the open assistant turn, the text up to its closed
    answer turn, and whether the question holds the image."""
    conversation, rounds, done = template.conversation(conv_mode), [], ""
    for question, answer in zip(turns[0::2], turns[1::2]):
        text, image = _template_turn(question[1])
        conversation.add_user(text, with_image=image)
        instruction = copy.deepcopy(conversation).add_assistant(None).prompt()
        closed = conversation.add_assistant(answer[1]).prompt()
        if not (instruction.startswith(done) and closed.startswith(done)):
            raise AssertionError("the conversation template is not built round by round")
        rounds.append((instruction[len(done) :], closed[len(done) :], image))
        done = closed
    return rounds


def conversation_ids_and_answer_spans(
    turns, tokenizer, image_token_id: int, conv_mode: str | None = None
) -> tuple[list[int], list[tuple[int, int]]] | None:
    """Compact ids (one image token) of the whole conversation in `conv_mode`'s template (None: the default
    family's) and each answer's [start, end), what closes its turn included (LLaVA's `</s>`; Qwen-VL's
    `<|im_end|>` and line break); None when an answer's first token would merge with the text before it (no
    clean cut: LLaVA masks such a sample entirely and warns "tokenization mismatch").

    `turns` alternate (USER, text), (ASSISTANT, text) and end with an answer. The ids equal the template's
    `tokenize_with_image` of the whole conversation (tested): tokens never merge across the special token that
    ends an answer, so each round (question, answer, end) is tokenized on its own, in its place (the first
    at the start, the others right after an answer's end), and each text once.
    """
    if len(turns) % 2 or any(role != (USER, ASSISTANT)[number % 2] for number, (role, _) in enumerate(turns)):
        raise ValueError("turns must alternate question, answer and end with an answer")
    template = family_for_conv_mode(conv_mode)
    rounds = _round_texts(turns, template, conv_mode)
    first = [template.tokenize_with_image(text, tokenizer, image_token_id, 1) for text in rounds[0][:2]]
    later_texts = [(text, image) for instruction, closed, image in rounds[1:] for text in (instruction, closed)]
    later = _tokenize_after_answer(later_texts, tokenizer, template, image_token_id)
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

    Items: `sample_id`, `input_ids` and `labels` (1-D long tensors, image tokens expanded),
    `image` (RGB PIL image or None) and `prompt_text` (the image's question: `family.prompt_inputs` reads it).
    A conversation longer than `model_max_length` is cut at the end; one left with no answer token (its loss would
    be undefined) is skipped. `image_seq_length`: each image's token count, one for every
    image or an `ImageTokens` (the image's own, from its size).
    """

    def __init__(
        self,
        samples: list[SupervisedSample],
        tokenizer,
        image_token_id: int,
        image_seq_length: "int | ImageTokens",
        model_max_length: int,
        skips: SkipCounter | None = None,
        check_images: bool = True,
        conv_mode: str | None = None,
    ):
        template = family_for_conv_mode(conv_mode)
        template.conversation(conv_mode)  # an unknown mode stops here, before any work
        self.image_token_id = image_token_id
        self.image_tokens = ImageTokens(image_seq_length)
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

    def image_counts(self, sample: SupervisedSample) -> list[int]:
        """The token count of each image of the sample (none or one)."""
        return [self.image_tokens.of(sample.image)] if sample.image else []

    def _tokenize(self, sample: SupervisedSample, tokenizer, model_max_length: int):
        try:
            tokenized = conversation_ids_and_answer_spans(sample.turns, tokenizer, self.image_token_id, self.conv_mode)
        except InputError as error:  # e.g. a multi-turn sample for a template of one question (InstructBLIP's)
            self.skips.skip(sample.sample_id, "the template cannot hold this conversation", str(error), sample.source)
            return None
        if tokenized is None:
            detail = "an answer's first token merges with the text before it"
            self.skips.skip(sample.sample_id, "tokenization mismatch", detail, sample.source)
            return None
        ids, spans = compact(tokenized[0]), tokenized[1]
        images = int((ids == self.image_token_id).sum())
        if images != (sample.image is not None):  # the model pairs each image with its image tokens
            detail = f"{images} <image> in the text, {'an image' if sample.image else 'no image'} file"
            self.skips.skip(sample.sample_id, "image and <image> do not match", detail, sample.source)
            return None
        kept = kept_length(ids, self.image_token_id, self.image_counts(sample), model_max_length)
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

    @staticmethod
    def prompt_text(sample: SupervisedSample) -> str:
        """The text of the turn that holds the image, as the template puts it after the image (what
        `family.prompt_inputs` reads: InstructBLIP's Q-Former, whose template holds one question); "" without one."""
        for role, text in sample.turns:
            if role == USER and IMAGE_TOKEN in text:
                return _template_turn(text)[0]
        return ""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        sample, ids, spans = self.items[index]
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        for start, end in spans:
            labels[start:end] = ids[start:end]
        counts = self.image_counts(sample)
        return {
            "sample_id": sample.sample_id,
            "input_ids": torch.from_numpy(expand_image_tokens(ids, self.image_token_id, counts)).long(),
            "labels": torch.from_numpy(expand_image_tokens(ids, self.image_token_id, counts, labels)),
            "image": load_image(sample.image, sample.sample_id, sample.source) if sample.image else None,
            "prompt_text": self.prompt_text(sample),
        }
