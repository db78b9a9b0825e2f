"""Where the block looked: its cross-attention over the image's patch grid, drawn over the image.

After an answer is generated, one forward pass over prompt + answer returns the block's
cross-attention probabilities; the row at the position that predicted an answer token is where
the block looked while producing that token. Heads and layers are averaged.

Which grid the block's vision rows form is the family's answer (`vision_grid`): a fixed patch grid
(LLaVA-1.5, the BLIP families' ViT), each image's own grid (Qwen-VL's dynamic resolution), or none
(a Q-Former's query outputs, which have no place on the image).
"""

import matplotlib
import numpy as np
import torch
from PIL import Image

from post_decoder.family import family_for

from .loading import LoadedModel

DISPLAY_SIZE = 336  # the tiny models see 32x32 images: show the grid at LLaVA-1.5's size


class NoGrid(Exception):
    """The block's vision rows have no place on the image: there is nothing to draw."""


@torch.no_grad()
def answer_attention(
    loaded: LoadedModel, prompt_ids: list[int], answer_ids: list[int], inputs: dict[str, torch.Tensor]
) -> np.ndarray | None:
    """[len(answer_ids), rows, columns]: the block's attention over the image's grid for each answer token, or
    None when the model has no cross-attention (no block, or the `no_cross_attn` control). `inputs`: the one
    image's keyword inputs (and the family's prompt inputs), as generate took them. NoGrid when the family says
    the block's vision rows have no grid."""
    model = loaded.model
    if model.post_decoder is None or not model.post_decoder.config.uses_cross_attention or not answer_ids:
        return None
    vision_source = model.post_decoder.config.vision_source
    family = family_for(model)
    (grid,) = family.vision_grid(model.config, inputs, vision_source)
    if grid is None:
        raise NoGrid(
            f"No heat map: the block reads the image's {vision_source} features, which have no place on the image "
            "(a Q-Former's query outputs); a block reading the vision tower's would have one."
        )
    # The position before each answer token predicts it: feed prompt + answer minus its last token
    # and keep the last len(answer_ids) positions.
    input_ids = torch.tensor([prompt_ids + answer_ids[:-1]], device=model.device)
    output = model(
        input_ids=input_ids,
        **inputs,
        logits_to_keep=len(answer_ids),
        output_post_decoder_attentions=True,
    )
    per_layer = torch.stack(output.post_decoder_attentions)  # [layers, 1, heads, answer, N]
    attention = per_layer.float().mean(dim=(0, 2))[0]  # [answer, N]
    (order,) = raster_orders(family, model.config, inputs, vision_source)
    return on_grid(attention, grid, order).cpu().numpy()


def raster_orders(family, config, inputs: dict, vision_source: str) -> list:
    """Each image's grid rows in raster order (indices into the rows the grid covers), or None where they already
    are (Qwen-VL's pre-merger rows go merged token by merged token)."""
    return family.vision_rows_in_raster(config, inputs, vision_source)


def on_grid(attention: torch.Tensor, grid: tuple[int, int], order: torch.Tensor | None = None) -> torch.Tensor:
    """[T, N] over one image's vision rows -> [T, rows, columns]: the grid covers the last rows x columns of
    them (a leading CLS row, where there is one, is dropped); `order`: those rows' indices in raster order."""
    rows, columns = grid
    if attention.shape[-1] < rows * columns:
        raise ValueError(f"{attention.shape[-1]} vision rows cannot fill a {rows} x {columns} grid")
    covered = attention[:, attention.shape[-1] - rows * columns :]
    if order is not None:
        covered = covered[:, torch.as_tensor(order, device=covered.device)]
    return covered.reshape(attention.shape[0], rows, columns)


def seen_image(inputs: dict[str, torch.Tensor], image: Image.Image, image_processor, grid: tuple[int, int]):
    """The image as the model saw it: from its pixel values when they are one picture ([1, 3, H, W]: padded,
    resized, cropped as the family's processor does), else (flattened patches, Qwen-VL's) the image resized to
    its grid's shape, which is how such a processor resizes it."""
    pixel_values = inputs["pixel_values"]
    if pixel_values.dim() == 4:
        processor = getattr(image_processor, "image_processor", image_processor)  # a processor with one inside
        mean = torch.tensor(processor.image_mean)[:, None, None]
        std = torch.tensor(processor.image_std)[:, None, None]
        pixels = (pixel_values[0].float().cpu() * std + mean).clamp(0, 1)
        seen = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        if seen.width < DISPLAY_SIZE:  # nearest-neighbour: the pixels the model saw, each a square, not smoothed
            seen = seen.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST)
        return seen
    rows, columns = grid
    scale = DISPLAY_SIZE / max(rows, columns)
    return image.convert("RGB").resize(
        (max(1, round(columns * scale)), max(1, round(rows * scale))), Image.Resampling.BICUBIC
    )


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
