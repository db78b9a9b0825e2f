"""The small interface between a vision-language backbone and the post-decoder.

The block, the trainer and the evaluator need three things from a backbone family: the final
hidden states `h`, the vision features `v` of each sample's image(s) with a mask, and the head.
A family (LLaVA-1.5 now; Qwen2.5-VL, InstructBLIP later) provides `backbone_forward` returning a
`BackboneOutput` and `get_output_embeddings()`; nothing else depends on the family.
"""

from dataclasses import dataclass

import torch
from transformers import Cache


@dataclass
class BackboneOutput:
    hidden_states: torch.Tensor  # [B, T, D], after the backbone's final norm
    vision_features: torch.Tensor | None  # [B, N, Dv]; None when no image was passed in this call
    vision_mask: torch.Tensor | None  # [B, N] bool, True where a vision position is real
    past_key_values: Cache | None = None


def pack_images_per_sample(
    image_features: torch.Tensor, image_tokens_per_sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group per-image features [I, N, Dv] by sample, in order, given each sample's image-token count.

    Returns [B, max_images * N, Dv] and a mask [B, max_images * N]; a sample with no image gets an
    all-False mask row (the block then leaves it unchanged).
    """
    num_images, tokens_per_image, width = image_features.shape
    counts = image_tokens_per_sample.tolist()
    if any(count % tokens_per_image for count in counts) or sum(counts) != num_images * tokens_per_image:
        raise ValueError(
            f"image tokens per sample {counts} do not match {num_images} image(s) of {tokens_per_image} tokens each"
        )
    images_per_sample = [count // tokens_per_image for count in counts]
    most = max(max(images_per_sample), 1)
    packed = image_features.new_zeros(len(counts), most * tokens_per_image, width)
    mask = torch.zeros(len(counts), most * tokens_per_image, dtype=torch.bool, device=image_features.device)
    start = 0
    for sample, count in enumerate(images_per_sample):
        length = count * tokens_per_image
        packed[sample, :length] = image_features[start : start + count].reshape(length, width)
        mask[sample, :length] = True
        start += count
    return packed, mask
