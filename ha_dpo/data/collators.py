"""Batches for the trainers: preference pairs in the format `ha_dpo.objective.pair_logps.shared_pair_logps`
reads, and supervised samples for the model's forward with `labels`.

Images go through LLaVA's `pad` preprocessing. `pixel_values` holds the images of the samples
that have one, in order: the model matches images to samples by their image tokens.
"""

from post_decoder.images import preprocess_images

from .token_ids import IGNORE_INDEX, pad_and_mask


def _pixel_values(items: list[dict], image_processor) -> dict:
    images = [item["image"] for item in items if item["image"] is not None]
    return {"pixel_values": preprocess_images(images, image_processor)} if images else {}


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token"
            " (LLaVA-1.5 checkpoints add <pad>; see post_decoder.families.llava.conversation.add_llava_tokens)"
        )
    return tokenizer.pad_token_id


class PreferenceCollator:
    """`prompt_input_ids`/`prompt_attention_mask` [B, P] left-padded (the answers continue from the
    prompt's last position), `chosen_*` [B, C] and `rejected_*` [B, R] right-padded, `pixel_values`."""

    def __init__(self, tokenizer, image_processor):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.image_processor = image_processor

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for name, side in (("prompt", "left"), ("chosen", "right"), ("rejected", "right")):
            ids, mask = pad_and_mask([item[f"{name}_input_ids"] for item in items], self.pad_token_id, side)
            batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"] = ids, mask
        batch.update(_pixel_values(items, self.image_processor))
        return batch


class SupervisedCollator:
    """`input_ids`, `attention_mask`, `labels` (IGNORE_INDEX on padding) right-padded, `pixel_values`."""

    def __init__(self, tokenizer, image_processor):
        self.pad_token_id = _pad_token_id(tokenizer)
        self.image_processor = image_processor

    def __call__(self, items: list[dict]) -> dict:
        input_ids, attention_mask = pad_and_mask([item["input_ids"] for item in items], self.pad_token_id, "right")
        labels, _ = pad_and_mask([item["labels"] for item in items], IGNORE_INDEX, "right")
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            **_pixel_values(items, self.image_processor),
        }
