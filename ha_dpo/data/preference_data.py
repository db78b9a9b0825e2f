"""Preference pairs (image, question, chosen, rejected) tokenized for DPO: the prompt once, each
answer with the ids LLaVA-1.5 gives it inside the whole conversation.

The prompt is the template's `question_prompt(question, conv_mode=...)` (the family whose template
`conv_mode` names; LLaVA-1.5's end with "ASSISTANT:" and `conv_mode` picks the system prompt:
`vicuna_v1`, LLaVA-1.5's own, or `llava_v1`). An answer's ids are those of
the whole conversation, `prompt + " " + answer + "</s>"`, after the prompt's ids: where LLaVA's
preprocess_v1 starts an answer's labels. For ordinary text that equals
`tokenizer(answer, add_special_tokens=False).input_ids + [eos]`; for an answer that begins with
whitespace it does not (the space after "ASSISTANT:" joins it), and the whole conversation's ids
are what LLaVA trained on (tested with the Llama-2 tokenizer). Qwen-VL's prompt is its chat template, and an
answer's ids run to the end of its closed turn (`<|im_end|>` and the line break after it, as Qwen's own
fine-tuning code labels them).

Each image's token count is the family's for that image (`image_tokens.ImageTokens`): every image the
same for LLaVA-1.5, each image's own size for Qwen-VL.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from post_decoder.family import family_for_conv_mode

from .image_tokens import ImageTokens
from .images import load_image, with_readable_images
from .skips import SkipCounter
from .token_ids import compact, expand_image_tokens, expanded_length


@dataclass(frozen=True)
class PreferenceSample:
    sample_id: str
    image: str | None  # path of the image file; None for a text-only pair
    question: str
    chosen: str
    rejected: str
    source: str = ""  # the file it came from, for error messages


def prompt_and_answer_ids(
    question: str, answer: str, with_image: bool, tokenizer, image_token_id: int, conv_mode: str | None = None
) -> tuple[list[int], list[int]] | None:
    """(prompt ids, answer ids) with one image token per image, or None when the whole
    conversation's ids do not begin with the prompt's (no clean place to cut)."""
    if with_image:
        question = question.strip()  # LLaVA's preprocess_multimodal strips the turn holding the image
    template = family_for_conv_mode(conv_mode)
    prompt_text = template.question_prompt(question, with_image=with_image, conv_mode=conv_mode)
    prompt = template.tokenize_with_image(prompt_text, tokenizer, image_token_id, 1)
    conversation = template.conversation(conv_mode).add_user(question, with_image=with_image)
    conversation = conversation.add_assistant(answer).prompt()
    whole = template.tokenize_with_image(conversation, tokenizer, image_token_id, 1)
    if whole[: len(prompt)] != prompt:
        return None
    return prompt, whole[len(prompt) :]


class PreferenceDataset(Dataset):
    """Tokenized at construction, so every length problem is counted before training starts;
    images are checked here (exists, PIL can decode it) and opened when an item is served.

    Items: `sample_id`, `prompt_input_ids`, `chosen_input_ids`, `rejected_input_ids` (1-D long
    tensors; the prompt with its image tokens expanded), `image` (RGB PIL image or None) and `prompt_text`
    (the question after the image: `family.prompt_inputs` reads it).
    A sequence longer than `model_max_length` loses the end of its answer; a pair whose prompt
    leaves no room for an answer is skipped, and so is a pair whose two answers are the same ids
    (in the file, or once cut): it has nothing to prefer and only pulls the loss toward ln 2.
    No pair left at all is an `InputError` that says why. `image_seq_length`: each image's token count, one for
    every image or an `ImageTokens` (the image's own, from its size).
    """

    def __init__(
        self,
        samples: list[PreferenceSample],
        tokenizer,
        image_token_id: int,
        image_seq_length: "int | ImageTokens",
        model_max_length: int,
        skips: SkipCounter | None = None,
        check_images: bool = True,
        conv_mode: str | None = None,
    ):
        family_for_conv_mode(conv_mode)  # an unknown mode stops here, before any work
        self.image_token_id = image_token_id
        self.image_tokens = ImageTokens(image_seq_length)
        self.model_max_length = model_max_length
        self.conv_mode = conv_mode
        self.skips = skips if skips is not None else SkipCounter("preference pairs")
        cache: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}  # HA-DPO repeats pairs: tokenize each once
        self.items = []
        for sample in with_readable_images(samples, self.skips, check_images):
            item = self._tokenize(sample, tokenizer, cache)
            if item is not None:
                self.items.append(item)
        self.skips.require_some(len(self.items), "preference pairs", (sample.source for sample in samples))
        self.skips.note("preference pairs kept", len(self.items))
        self.skips.log()

    def _tokenize(self, sample: PreferenceSample, tokenizer, cache):
        for which, answer in (("chosen", sample.chosen), ("rejected", sample.rejected)):
            if not isinstance(answer, str):
                self.skips.skip(sample.sample_id, "not a string", f"{which} is {type(answer).__name__}", sample.source)
                return None
            if not answer.strip():
                self.skips.skip(sample.sample_id, "empty answer", which, sample.source)
                return None
        answers = []
        for answer in (sample.chosen, sample.rejected):
            key = (sample.question, answer, sample.image is not None)
            if key not in cache:
                pair = prompt_and_answer_ids(
                    sample.question, answer, sample.image is not None, tokenizer, self.image_token_id, self.conv_mode
                )
                cache[key] = None if pair is None else (compact(pair[0]), compact(pair[1]))
            if cache[key] is None:
                self.skips.skip(
                    sample.sample_id,
                    "tokenization mismatch",
                    "prompt ids are not a prefix of the conversation's",
                    sample.source,
                )
                return None
            prompt, ids = cache[key]
            answers.append(ids)
        chosen, rejected = answers
        if np.array_equal(chosen, rejected):
            self.skips.skip(sample.sample_id, "chosen and rejected are the same", source=sample.source)
            return None
        prompt_length = expanded_length(prompt, self.image_token_id, self.image_counts(sample))
        room = self.model_max_length - prompt_length
        if room <= 0:
            detail = f"prompt has {prompt_length} tokens, model_max_length is {self.model_max_length}"
            self.skips.skip(sample.sample_id, "no room for the answer within model_max_length", detail, sample.source)
            return None
        if np.array_equal(chosen[:room], rejected[:room]):
            detail = f"they differ after token {room} of the answer; model_max_length is {self.model_max_length}"
            self.skips.skip(
                sample.sample_id, "chosen and rejected the same once cut at model_max_length", detail, sample.source
            )
            return None
        if len(chosen) > room or len(rejected) > room:
            self.skips.note("pairs with an answer cut at model_max_length")
        return sample, prompt, chosen[:room], rejected[:room]

    def image_counts(self, sample: PreferenceSample) -> list[int]:
        """The token count of each image of the sample's prompt (none or one)."""
        return [self.image_tokens.of(sample.image)] if sample.image else []

    @staticmethod
    def prompt_text(sample: PreferenceSample) -> str:
        """The question as the template puts it after the image (what `family.prompt_inputs` reads: InstructBLIP's
        Q-Former): stripped, as `prompt_and_answer_ids` strips the turn holding the image."""
        return sample.question.strip() if sample.image else sample.question

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        sample, prompt, chosen, rejected = self.items[index]
        prompt = expand_image_tokens(prompt, self.image_token_id, self.image_counts(sample))
        return {
            "sample_id": sample.sample_id,
            "prompt_input_ids": torch.from_numpy(prompt).long(),
            "chosen_input_ids": torch.from_numpy(chosen).long(),
            "rejected_input_ids": torch.from_numpy(rejected).long(),
            "image": load_image(sample.image, sample.sample_id, sample.source) if sample.image else None,
            "prompt_text": self.prompt_text(sample),
        }
