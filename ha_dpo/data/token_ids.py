"""Token ids kept compact in memory: each image is one image-token id until a sample is served.

Datasets tokenize with one image token per image (identical to the expanded ids but for the length of
each image run) and expand on access, so a large dataset holds a few hundred int32 per sample
rather than 576 more Python ints. `image_seq_length` below is each image's count: one int for every
image (LLaVA-1.5's 576), or one count per image token of `ids`, in order (Qwen-VL's vary with the image).
Batches pad their rows with `pad_and_mask`, labels with `IGNORE_INDEX`.
"""

import numpy as np
import torch

IGNORE_INDEX = -100  # the label of a position the loss skips (LLaVA's, and torch's cross_entropy default)


def compact(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int32)


def _repeats(ids: np.ndarray, image_token_id: int, image_seq_length) -> np.ndarray:
    """How many positions each compact id takes: 1, or its image's count."""
    images = ids == image_token_id
    repeats = np.ones(len(ids), dtype=np.int64)
    counts = np.asarray(image_seq_length, dtype=np.int64)
    if counts.ndim and len(counts) != int(images.sum()):
        raise ValueError(f"{len(counts)} image-token counts for {int(images.sum())} image tokens")
    repeats[images] = counts
    return repeats


def expanded_length(ids: np.ndarray, image_token_id: int, image_seq_length) -> int:
    return int(_repeats(ids, image_token_id, image_seq_length).sum())


def expand_image_tokens(ids: np.ndarray, image_token_id: int, image_seq_length, parallel: np.ndarray | None = None):
    """Repeat each image-token position its image's count times: of `ids`, or of an array parallel
    to them (labels) when `parallel` is given."""
    return np.repeat(ids if parallel is None else parallel, _repeats(ids, image_token_id, image_seq_length))


def kept_length(ids: np.ndarray, image_token_id: int, image_seq_length, max_length: int) -> int:
    """How many compact ids fit in `max_length` expanded positions (an image fits whole or not at all)."""
    ends = np.cumsum(_repeats(ids, image_token_id, image_seq_length))
    return int(np.searchsorted(ends, max_length, side="right"))


def pad_and_mask(rows: list[torch.Tensor], value, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> ([B, longest row] padded with `value` on `side`, attention mask of 0/1), with the
    rows' dtype and on their device. The one padding of the project's batches (collators, the
    full-sequence pairs, the shared path's answers, the toy model's training)."""
    width = max(len(row) for row in rows)
    padded = rows[0].new_full((len(rows), width), value)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    for number, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        padded[number, span] = row
        mask[number, span] = 1
    return padded, mask
