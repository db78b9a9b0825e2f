import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from post_decoder.image_processing import load_image_processor, open_image, preprocess_images
from post_decoder.tiny import clip_preprocessor_config
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    import json

    folder = tmp_path_factory.mktemp("clip336")
    (folder / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(336)))
    return load_image_processor(str(folder))


def llava_pad_reference(image: Image.Image, size: int = 336) -> np.ndarray:
    """LLaVA-1.5's `expand2square` with the CLIP mean colour, then CLIP's bicubic resize,
    rescale and normalisation, written out independently."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in OPENAI_CLIP_MEAN))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    resized = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    normalised = (resized - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    return normalised.transpose(2, 0, 1).astype(np.float32)


def random_image(mode, size, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@pytest.mark.parametrize("size", [(64, 64), (90, 40), (23, 77), (1, 50), (401, 300)])
def test_pad_preprocessing_equals_llava(processor, size):
    image = random_image("RGB", size)
    pixel_values = preprocess_images([image], processor)
    assert pixel_values.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(pixel_values[0].numpy(), llava_pad_reference(image), atol=1e-5)


@pytest.mark.parametrize("photo", ["extreme_ironing.jpg", "waterview.jpg", "demo_1.jpg", "demo_2.jpg"])
def test_pad_preprocessing_equals_llava_on_real_photographs(processor, photo):
    image = open_image(shared_file("images", photo))
    np.testing.assert_allclose(
        preprocess_images([image], processor)[0].numpy(), llava_pad_reference(image), atol=1e-5
    )


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK"])
def test_other_image_modes_become_rgb(processor, mode, tmp_path):
    image = random_image(mode if mode != "I;16" else "L", (30, 20))
    if mode == "I;16":
        image = image.convert("I;16")
    path = tmp_path / ("image.png" if mode != "CMYK" else "image.jpg")
    image.save(path)
    opened = open_image(str(path))
    assert opened.mode == "RGB" and opened.size == (30, 20)
    pixel_values = preprocess_images([opened], processor)
    assert pixel_values.shape == (1, 3, 336, 336) and torch.isfinite(pixel_values).all()


def test_transparent_pixels_become_white_not_black():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    from post_decoder.image_processing import to_rgb

    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)


def test_a_missing_or_broken_image_names_its_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        open_image(str(tmp_path / "nothing.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        open_image(str(broken))
