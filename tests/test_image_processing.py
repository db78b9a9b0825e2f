import numpy as np
import pytest
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from post_decoder.errors import InputError
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config
from post_decoder.images import open_image, preprocess_images, to_rgb
from tests.helpers import shared_file


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
    np.testing.assert_allclose(preprocess_images([image], processor)[0].numpy(), llava_pad_reference(image), atol=1e-5)


def viewed_rgb(mode, image, path) -> np.ndarray:
    """The RGB pixels a viewer shows of `image` (saved at `path`), worked out here without open_image:
    grey repeated, the palette looked up, alpha over white, 16 bits by their high byte, and a CMYK JPEG
    as Pillow decodes it (the JPEG changed the pixels)."""
    if mode == "CMYK":
        with Image.open(path) as saved:
            return np.asarray(saved.convert("RGB"))
    pixels = np.asarray(image).astype(np.float64)
    if mode == "P":  # the palette's colours, and its alpha (PNG's tRNS) where the file has one
        with Image.open(path) as saved:
            transparency = saved.info.get("transparency", b"")
        palette = np.array(image.getpalette(), dtype=np.float64).reshape(-1, 3)
        alpha = np.full(len(palette), 255.0)
        if isinstance(transparency, int):
            alpha[transparency] = 0
        else:
            alpha[: len(transparency)] = np.frombuffer(transparency, dtype=np.uint8)
        mode, pixels = "RGBA", np.concatenate([palette, alpha[:, None]], -1)[np.asarray(image)]
    if mode == "I;16":
        return np.repeat(expected_8_bit(pixels.astype(np.int64))[..., None], 3, -1)
    if mode == "L":
        return np.repeat(pixels[..., None], 3, -1)
    colour, alpha = (pixels[..., :3], pixels[..., 3:]) if mode == "RGBA" else (pixels[..., :1], pixels[..., 1:])
    return np.broadcast_to(colour * alpha / 255 + 255 * (1 - alpha / 255), (*pixels.shape[:2], 3)).round()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK"])
def test_other_image_modes_become_rgb(processor, mode, tmp_path):
    image = random_image(mode if mode != "I;16" else "L", (30, 20))
    if mode == "I;16":
        image = image.convert("I;16")
    path = tmp_path / ("image.png" if mode != "CMYK" else "image.jpg")
    image.save(path)
    opened = open_image(str(path))
    assert opened.mode == "RGB" and opened.size == (30, 20)
    np.testing.assert_allclose(np.asarray(opened), viewed_rgb(mode, image, path), atol=1, rtol=0)
    pixel_values = preprocess_images([opened], processor)
    assert pixel_values.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(pixel_values[0].numpy(), llava_pad_reference(opened), atol=1e-5)


def test_transparent_pixels_become_white_not_black():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    from post_decoder.images import to_rgb

    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)


def test_a_missing_or_broken_image_names_its_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        open_image(str(tmp_path / "nothing.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        open_image(str(broken))


# --- 16-bit images: scaled to 8 bits as viewers show them, not clipped to white ---------------

GRADIENT_16 = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))  # left to right, 8 rows


def expected_8_bit(values):
    """The high byte of each 16-bit value: how Pillow decodes 16-bit colour PNGs (and libpng's strip_16)."""
    return (np.asarray(values, dtype=np.int64) >> 8).astype(np.uint8)


def test_a_16_bit_greyscale_png_follows_its_gradient_in_8_bits(tmp_path):
    path = tmp_path / "gradient16.png"
    Image.fromarray(GRADIENT_16).save(path)  # a 16-bit greyscale PNG
    with Image.open(path) as written:
        assert written.mode == "I;16" and np.array_equal(np.asarray(written), GRADIENT_16)
    opened = np.asarray(open_image(str(path)))
    assert opened.dtype == np.uint8 and opened.shape == (8, 256, 3)
    for channel in range(3):
        np.testing.assert_array_equal(opened[..., channel], expected_8_bit(GRADIENT_16))
    row = opened[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0) and len(set(row)) > 200
    assert np.mean(row == 255) < 0.02  # PIL's own convert("RGB") gives 255 almost everywhere
    assert np.mean(np.asarray(Image.open(path).convert("RGB"))[0, :, 0] == 255) > 0.9


def sixteen_bit_images():
    little = Image.frombytes("I;16", (256, 8), GRADIENT_16.astype("<u2").tobytes())
    big = Image.frombytes("I;16B", (256, 8), GRADIENT_16.astype(">u2").tobytes())
    thirty_two = Image.fromarray(GRADIENT_16.astype(np.int32))  # mode I: how older Pillow opened 16-bit PNGs
    return {"I;16": little, "I;16B": big, "I": thirty_two}


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_modes_in_memory_become_the_same_8_bit_rgb(mode):
    image = sixteen_bit_images()[mode]
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb)[..., 1], expected_8_bit(GRADIENT_16))


def test_a_16_bit_pgm_which_pil_opens_in_mode_i_follows_its_gradient(tmp_path):
    path = tmp_path / "gradient16.pgm"
    path.write_bytes(b"P5 256 8 65535\n" + GRADIENT_16.astype(">u2").tobytes())
    with Image.open(path) as written:
        assert written.mode == "I"
    np.testing.assert_array_equal(np.asarray(open_image(str(path)))[..., 2], expected_8_bit(GRADIENT_16))


def test_mode_i_values_outside_16_bits_are_clipped_not_wrapped():
    image = Image.fromarray(np.array([[-5, 0, 255, 256, 65535, 70000, 2**31 - 1]], dtype=np.int32))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 0, 0, 1, 255, 255, 255]


def test_a_truncated_jpeg_is_refused_when_decoded_though_pil_verifies_it(tmp_path):
    from ha_dpo.data.images import image_problem

    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = tmp_path / "truncated.jpg"
    Image.fromarray(pixels).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:-400])
    with Image.open(path) as image:
        image.verify()  # passes: verify does not decode
    with pytest.raises(InputError, match=r"^cannot read image .*truncated\.jpg: OSError: image file is truncated"):
        open_image(str(path))
    reason, detail = image_problem(str(path))
    assert reason == "unreadable image" and detail.startswith(f"{path}: OSError: image file is truncated")
    assert image_problem(str(tmp_path / "absent.jpg")) == ("missing image", str(tmp_path / "absent.jpg"))
