"""Batches for the trainers: preference pairs in the format `ha_dpo.objective.pair_logps.shared_pair_logps`
reads, and supervised samples for the model's forward with `labels`.

The images of the samples that have one, in order, become the model family's image inputs
(`family.image_inputs`: LLaVA-1.5's `pixel_values` after its `pad` preprocessing; Qwen-VL's flattened patches
`pixel_values` and `image_grid_thw`), at the top level of the batch beside the ids: the model matches images to
samples by their image tokens. Given the model's config, a collator checks that each sample's run of image tokens
(the dataset's count, from the image's size) is the count the processor gave (`family.image_token_counts`).
Beside them go the inputs the family reads from each image's question (`family.prompt_inputs` of the items'
`prompt_text`: InstructBLIP's Q-Former tokens; none for LLaVA, Qwen-VL, MiniGPT-4), one row per image as well.
"""

import numpy as np
import torch

from post_decoder.family import DEFAULT_FAMILY, family_for

from .token_ids import IGNORE_INDEX, pad_and_mask

PREFERENCE_TEXT_KEYS = tuple(
    f"{name}_{part}" for name in ("prompt", "chosen", "rejected") for part in ("input_ids", "attention_mask")
)
SUPERVISED_TEXT_KEYS = ("input_ids", "attention_mask", "labels")


def image_inputs_of(batch: dict, text_keys) -> dict:
    """The batch's image inputs: everything a collator put beside the text (none: no image in the batch)."""
    return {name: value for name, value in batch.items() if name not in text_keys}


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token"
            " (LLaVA-1.5 checkpoints add <pad>; see post_decoder.families.llava.conversation.add_llava_tokens)"
        )
    return tokenizer.pad_token_id


class _ImageInputs:
    """The family's image inputs of a batch's images, their counts checked against the ids' image runs."""

    def __init__(self, image_processor, config=None):
        self.image_processor, self.config = image_processor, config
        self.family = family_for(config if config is not None else DEFAULT_FAMILY)

    def __call__(self, items: list[dict], ids_key: str) -> dict:
        with_image = [item for item in items if item["image"] is not None]
        if not with_image:
            return {}
        inputs = self.family.image_inputs([item["image"] for item in with_image], self.image_processor)
        if self.config is not None:
            self._check_counts(with_image, ids_key, self.family.image_token_counts(self.config, inputs))
        texts = [item.get("prompt_text", "") for item in with_image]
        return {**inputs, **self.family.prompt_inputs(texts, self.image_processor)}

    def prompt_key_ids(self, text: str) -> list[np.ndarray]:
        """The ids the family reads from one image's question (`prompt_inputs`, each tensor flattened; none for a
        family that reads none): what a backbone cache's keys add, since the states depend on them."""
        inputs = self.family.prompt_inputs([text], self.image_processor)
        return [value.reshape(-1).numpy() for _, value in sorted(inputs.items())]

    def _check_counts(self, items: list[dict], ids_key: str, counts: list[int]):
        image_token_id = self.family.image_token_id(self.config)
        for item, count in zip(items, counts, strict=True):
            in_ids = int((item[ids_key] == image_token_id).sum())
            if in_ids != count:
                raise ValueError(
                    f"sample {item.get('sample_id')}: its ids hold {in_ids} image tokens, the image processor gives "
                    f"its image {count}: the dataset's count (from the image's size) disagrees with the processor's"
                )


class PreferenceCollator:
    """`prompt_input_ids`/`prompt_attention_mask` [B, P] left-padded (the answers continue from the
    prompt's last position), `chosen_*` [B, C] and `rejected_*` [B, R] right-padded, and the image inputs.
    `config`: the model's (the family's image inputs and the check of each image's count); None: the
    default family's inputs, unchecked."""

    def __init__(self, tokenizer, image_processor, config=None):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.image_processor = image_processor
        self.image_inputs = _ImageInputs(image_processor, config)

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for name, side in (("prompt", "left"), ("chosen", "right"), ("rejected", "right")):
            ids, mask = pad_and_mask([item[f"{name}_input_ids"] for item in items], self.pad_token_id, side)
            batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"] = ids, mask
        batch.update(self.image_inputs(items, "prompt_input_ids"))
        return batch


class SupervisedCollator:
    """`input_ids`, `attention_mask`, `labels` (IGNORE_INDEX on padding) right-padded, and the image inputs."""

    def __init__(self, tokenizer, image_processor, config=None):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.image_processor = image_processor
        self.image_inputs = _ImageInputs(image_processor, config)

    def __call__(self, items: list[dict]) -> dict:
        input_ids, attention_mask = pad_and_mask([item["input_ids"] for item in items], self.pad_token_id, "right")
        labels, _ = pad_and_mask([item["labels"] for item in items], IGNORE_INDEX, "right")
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            **self.image_inputs(items, "input_ids"),
        }


def repeated_images(image_inputs: dict, times: int = 2) -> dict:
    """The inputs of a batch's images `times` over, in that order (images 0..I-1, then again): every family's
    image inputs (and prompt inputs) are its images' rows one after another along the first axis, as
    `BackboneFamily.image_inputs` promises (LLaVA's [I, 3, H, W]; Qwen-VL's patches and `image_grid_thw`;
    InstructBLIP's Q-Former tokens)."""
    return {name: torch.cat([value] * times) for name, value in image_inputs.items()}
