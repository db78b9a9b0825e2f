"""Opening an uploaded image without trusting it.

An upload is limited in bytes by gradio, but a few kilobytes of PNG can declare 13000 x 13000
pixels (3 GB once decoded). The size is read from the file's header, which `Image.open` parses
without decoding, and checked before any pixel is decoded. It is counted on the square the
image becomes: LLaVA-1.5 pads every image to a square of its longer side before resizing it.
Messages name the file by its own name only, never the server's temporary path.
"""

import os

from PIL import Image, UnidentifiedImageError

from post_decoder.images import to_rgb

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class UploadRefused(Exception):
    """A message for the page: what is wrong with the upload and what to do."""


def padded_pixels(width: int, height: int) -> int:
    """The pixels of the square LLaVA-1.5's preprocessing pads the image to."""
    return max(width, height) ** 2


def open_upload(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """The upload as an RGB image, or `UploadRefused` when it is not a readable image or too large."""
    name = os.path.basename(path)
    unreadable = UploadRefused(
        f"The upload ({name}) is not an image that can be read. Upload a JPEG, PNG or WebP file."
    )
    try:
        with Image.open(path) as image:  # parses the header only: nothing is decoded yet
            width, height = image.size
            if padded_pixels(width, height) > max_pixels:
                raise too_large(name, width, height, max_pixels)
            return to_rgb(image)  # decodes
    except Image.DecompressionBombError as error:  # PIL's own guard, raised from the header too
        raise UploadRefused(
            f"The upload ({name}) declares more pixels than this page's limit of {max_pixels / 1e6:g} megapixels. "
            "Upload a smaller image."
        ) from error
    except (UnidentifiedImageError, OSError, ValueError) as error:  # not an image, truncated, or missing
        raise unreadable from error


def too_large(name: str, width: int, height: int, max_pixels: int) -> UploadRefused:
    side = max(width, height)
    return UploadRefused(
        f"The upload ({name}) is {width} x {height} pixels: the model pads it to a {side} x {side} square, "
        f"{padded_pixels(width, height) / 1e6:.1f} megapixels, over this page's limit of {max_pixels / 1e6:g} "
        "megapixels. Upload a smaller image."
    )
