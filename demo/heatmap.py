"""Where the block looked: its cross-attention over the image's patch grid, drawn over the image.

After an answer is generated, one forward pass over prompt + answer returns the block's
cross-attention probabilities; the row at the position that predicted an answer token is where
the block looked while producing that token. Heads and layers are averaged.
"""

import math

import matplotlib
import numpy as np
import torch
from PIL import Image

from .loading import LoadedModel

DISPLAY_SIZE = 336  # the tiny models see 32x32 images: show the grid at LLaVA-1.5's size


@torch.no_grad()
def answer_attention(
    loaded: LoadedModel, prompt_ids: list[int], answer_ids: list[int], pixel_values
) -> np.ndarray | None:
    """[len(answer_ids), side, side]: the block's attention over the patch grid for each answer
    token, or None when the model has no cross-attention (no block, or the `no_cross_attn` control)."""
    model = loaded.model
    if model.post_decoder is None or not model.post_decoder.config.uses_cross_attention or not answer_ids:
        return None
    # The position before each answer token predicts it: feed prompt + answer minus its last token
    # and keep the last len(answer_ids) positions.
    input_ids = torch.tensor([prompt_ids + answer_ids[:-1]], device=model.device)
    output = model(
        input_ids=input_ids,
        pixel_values=pixel_values,
        logits_to_keep=len(answer_ids),
        output_post_decoder_attentions=True,
    )
    per_layer = torch.stack(output.post_decoder_attentions)  # [layers, 1, heads, answer, N]
    attention = per_layer.float().mean(dim=(0, 2))[0]  # [answer, N]
    return patch_grid(attention, model.config.vision_feature_select_strategy).cpu().numpy()


def patch_grid(attention: torch.Tensor, select_strategy: str) -> torch.Tensor:
    """[T, N] over the vision features -> [T, side, side] over the patches (CLS dropped under `full`)."""
    if select_strategy == "full":
        attention = attention[:, 1:]
    side = math.isqrt(attention.shape[-1])
    if side * side != attention.shape[-1]:
        raise ValueError(f"{attention.shape[-1]} vision features do not form a square patch grid")
    return attention.reshape(attention.shape[0], side, side)


def seen_image(pixel_values: torch.Tensor, image_processor) -> Image.Image:
    """The image as the model saw it (padded to a square, resized, cropped), from its pixel values."""
    mean = torch.tensor(image_processor.image_mean)[:, None, None]
    std = torch.tensor(image_processor.image_std)[:, None, None]
    pixels = (pixel_values[0].float().cpu() * std + mean).clamp(0, 1)
    image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if image.width < DISPLAY_SIZE:  # nearest-neighbour: the pixels the model saw, each a square, not smoothed ones
        image = image.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST)
    return image


def overlay(image: Image.Image, grid: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """`grid` [side, side] coloured (scaled to its own maximum) and blended over `image`."""
    scaled = grid / grid.max() if grid.max() > 0 else grid
    colours = (matplotlib.colormaps[colormap](scaled)[..., :3] * 255).astype(np.uint8)
    heat = Image.fromarray(colours).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)


def token_choices(tokenizer, answer_ids: list[int]) -> list[tuple[str, int]]:
    """(label, index) for each answer token, and ("average over the answer", -1) first."""
    choices = [("average over the answer", -1)]
    for index, token_id in enumerate(answer_ids):
        text = tokenizer.decode([token_id]) or tokenizer.convert_ids_to_tokens(token_id) or "?"
        choices.append((f"{index + 1}: {text!r} (id {token_id})", index))
    return choices


def token_map(attention: np.ndarray, choice: int, answer_ids: list[int], special_ids: set[int]) -> np.ndarray:
    """One token's map, or (choice -1) the mean over the answer's tokens other than special ones
    such as the end-of-sequence token."""
    if choice >= 0:
        return attention[choice]
    rows = [index for index, token_id in enumerate(answer_ids) if token_id not in special_ids] or list(
        range(len(answer_ids))
    )
    return attention[rows].mean(axis=0)
