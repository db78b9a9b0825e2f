"""Plain helpers the tests share: files of ../shared/data, tiny models with a block, their inputs.
Fixtures live in tests/conftest.py; the data sets, the POPE workspace, the preference pairs and the
chart checks in this package's modules."""

import os
import socket
from contextlib import contextmanager

import pytest
import torch

from post_decoder import PostDecoderConfig
from post_decoder.families.llava import LlavaPostDecoderConfig, LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from post_decoder.tiny_parts import add_noise  # noqa: F401  (the tests' name for it)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def shared_file(*parts: str) -> str:
    """A file of ../shared/data; the test skips when the folder is absent (outside users)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not here (../shared/data is only beside the project's own checkouts)")
    return path


def pad_rows(rows, side, pad):
    """Lists of ids -> (ids, mask) tensors, padded on the left or the right with `pad`."""
    width = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        padding = width - len(row)
        ids.append([pad] * padding + row if side == "left" else row + [pad] * padding)
        mask.append([0] * padding + [1] * len(row) if side == "left" else [1] * len(row) + [0] * padding)
    return torch.tensor(ids), torch.tensor(mask)


def with_block(plain, variant, perturb=0.0, seed=0, **block_fields):
    """Our model on the plain model's weights, with a new block of `variant` (identity unless perturbed)."""
    model = LlavaPostDecoderForConditionalGeneration(LlavaPostDecoderConfig.from_llava_config(plain.config))
    model.load_state_dict(plain.state_dict())
    model.attach_post_decoder(PostDecoderConfig(variant=variant, **block_fields))
    if perturb:
        add_noise(model.post_decoder, perturb, seed)
    return model.eval()


def image_batch(model, tokenizer, questions, with_image=None, seed=0, padding_side="left"):
    """Tokenized LLaVA prompts (padded) and pixel values for the samples that have an image."""
    config = model.config
    with_image = with_image or [True] * len(questions)
    sequences = [
        tokenize_with_image(
            question_prompt(question, with_image=has_image), tokenizer, config.image_token_id, config.image_seq_length
        )
        for question, has_image in zip(questions, with_image)
    ]
    input_ids, attention_mask = pad_rows(sequences, padding_side, tokenizer.pad_token_id)
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(sum(with_image), 3, size, size, generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(with_image):
        batch["pixel_values"] = pixel_values
    return batch


@contextmanager
def eos_banned(model):
    """Make EOS impossible (a -1e9 bias on its logit), so greedy decoding always runs to its limit
    and comparisons cover whole continuations, never an empty answer."""
    bias = torch.zeros(model.lm_head.out_features, dtype=model.lm_head.weight.dtype)
    bias[model.generation_config.eos_token_id] = -1e9
    model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        yield model
    finally:
        model.lm_head.bias = None


def named(name):
    """A `msg` for torch.testing.assert_close that puts `name` (a weight, a field) before its report."""
    return lambda report: f"{name}: {report}"


def free_port() -> int:
    """A port no one listens on now (multi-process tests; other runs may share the machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
