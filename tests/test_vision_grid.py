"""`family.vision_grid`: where each of the block's vision rows lies on its image, checked against the rows
`backbone_forward` gives the block (every family, both vision sources) and, for Qwen-VL's patch order, against the
processor's own patches."""

import numpy as np
import pytest
import torch
from PIL import Image

from post_decoder import PostDecoderConfig
from post_decoder.families.instructblip.tiny import (
    make_qformer_tokenizer,
    make_tiny_instructblip,
    tiny_processor,
    train_language_tokenizer,
)
from post_decoder.families.instructblip.tiny import question_batch as instructblip_batch
from post_decoder.families.instructblip.tiny import with_block as instructblip_with_block
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    minigpt4_batch,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
)
from post_decoder.families.minigpt4.tiny import with_block as minigpt4_with_block
from post_decoder.family import family_for
from tests.helpers import image_batch, with_block
from tests.helpers.qwen_vl import TinyQwen, batch, ours, picture

SOURCES = ("vision_tower", "projector")


def rows_per_image(model, inputs) -> list[int]:
    """How many vision rows `backbone_forward` gives the block for each sample (one image each)."""
    with torch.no_grad():
        backbone = model.backbone_forward(**inputs)
    return backbone.vision_mask.sum(-1).tolist()


def covered(grids, cls_rows: int) -> list[int | None]:
    return [None if grid is None else grid[0] * grid[1] + cls_rows for grid in grids]


@pytest.mark.parametrize("source", SOURCES)
def test_llavas_grid_is_the_towers_patches(plain_llava, llava_tokenizer, source):
    model = with_block(plain_llava, "post_interaction", vision_source=source)
    inputs = image_batch(model, llava_tokenizer, ["Is there a dog?", "Is there a cat?"])
    grids = family_for(model).vision_grid(model.config, {"pixel_values": inputs["pixel_values"]}, source)
    assert grids == [(4, 4), (4, 4)]  # 32 pixels, 8-pixel patches; the `default` strategy drops CLS
    assert rows_per_image(model, inputs) == covered(grids, 0)


@pytest.mark.parametrize("source", SOURCES)
def test_instructblips_grid_is_the_vits_patches_after_cls_and_the_queries_have_none(tmp_path, source):
    tokenizers = train_language_tokenizer(str(tmp_path / "llm")), make_qformer_tokenizer(str(tmp_path / "qformer"))
    plain = make_tiny_instructblip(*tokenizers)
    processor = tiny_processor(*tokenizers, plain.config)
    model = instructblip_with_block(plain, "post_interaction", vision_source=source)
    images = [picture(40, 30, seed) for seed in range(2)]
    inputs = instructblip_batch(model, processor, images, ["Is there a dog?", "Is there a cat?"])
    grids = family_for(model).vision_grid(model.config, {"pixel_values": inputs["pixel_values"]}, source)
    if source == "projector":
        assert grids == [None, None]
        assert rows_per_image(model, inputs) == [plain.config.num_query_tokens] * 2
    else:
        assert grids == [(4, 4), (4, 4)]
        assert rows_per_image(model, inputs) == covered(grids, 1)


@pytest.mark.parametrize("has_qformer", [False, True], ids=["llama2", "vicuna"])
@pytest.mark.parametrize("source", SOURCES)
def test_minigpt4s_grid_is_the_vits_patches_or_the_llama2_versions_runs_of_four(tmp_path, source, has_qformer):
    train_tiny_minigpt4_tokenizer(str(tmp_path))
    tokenizer = tiny_minigpt4_tokenizer(str(tmp_path))
    plain = make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=has_qformer)
    model = minigpt4_with_block(plain, "post_interaction", vision_source=source)
    inputs = minigpt4_batch(model, tokenizer, ["Is there a dog?", "Is there a cat?"])
    grids = family_for(model).vision_grid(model.config, {"pixel_values": inputs["pixel_values"]}, source)
    rows = rows_per_image(model, inputs)
    if source == "vision_tower":
        assert grids == [(4, 4), (4, 4)] and rows == covered(grids, 1)
    elif has_qformer:
        assert grids == [None, None] and rows == [plain.config.num_query_tokens] * 2
    else:
        assert grids == [(4, 1), (4, 1)] and rows == covered(grids, 0)  # 16 patches, four to an image token


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return TinyQwen("qwen2_5_vl", tmp_path_factory.mktemp("qwen_grid"))


@pytest.mark.parametrize("source", SOURCES)
def test_qwens_grid_follows_each_images_own_size(qwen, source):
    model = ours(qwen.plain, PostDecoderConfig(variant="post_interaction", vision_source=source))
    samples = [("Is there a dog?", [picture(40, 24)]), ("Is there a cat?", [picture(24, 32, seed=1)])]
    inputs = batch(model, qwen.tokenizer, qwen.processor, samples)
    grids = family_for(model).vision_grid(model.config, inputs, source)
    assert grids == ([(3, 5), (4, 3)] if source == "projector" else [(6, 10), (8, 6)])
    assert rows_per_image(model, inputs) == covered(grids, 0)


def test_qwens_pre_merger_rows_map_to_the_grid_as_documented(qwen):
    """An image whose 4-pixel patches each have their own grey level: row k of the processor's patches (the order
    of the block's `vision_tower` rows) is the patch `vision_grid`'s docstring says: merged token by merged token,
    each one's 2x2 patches in raster order."""
    height, width, patch, merge = 16, 24, 4, 2
    levels = np.arange((height // patch) * (width // patch)).reshape(height // patch, width // patch) * 5
    pixels = np.kron(levels, np.ones((patch, patch))).astype(np.uint8)
    image = Image.fromarray(np.stack([pixels] * 3, axis=-1))
    inputs = family_for(qwen.plain).image_inputs([image], qwen.processor)
    (rows, columns) = family_for(qwen.plain).vision_grid(qwen.plain.config, inputs, "vision_tower")[0]
    assert (rows, columns) == (height // patch, width // patch)
    means = inputs["pixel_values"][:, : patch * patch].mean(-1)  # the red channel of the first frame, normalized
    order = torch.argsort(torch.argsort(means)).tolist()  # each row's grey level, ranked: its patch's number
    expected = []
    for k in range(rows * columns):
        merged, within = divmod(k, merge * merge)
        row = (merged // (columns // merge)) * merge + within // merge
        column = (merged % (columns // merge)) * merge + within % merge
        expected.append(row * columns + column)
    assert order == expected
    # The family's raster order undoes it: the grey levels come back row by row.
    (raster,) = family_for(qwen.plain).vision_rows_in_raster(qwen.plain.config, inputs, "vision_tower")
    assert [order[index] for index in raster] == list(range(rows * columns))
    assert family_for(qwen.plain).vision_rows_in_raster(qwen.plain.config, inputs, "projector") == [None]


def test_every_other_familys_rows_are_in_raster_order_already(plain_llava):
    grids_of = {"pixel_values": torch.zeros(2, 3, 32, 32)}
    assert family_for(plain_llava).vision_rows_in_raster(plain_llava.config, grids_of, "vision_tower") == [None] * 2
