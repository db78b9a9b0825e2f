"""How many tokens each training image takes in the prompt, known before any image is decoded.

LLaVA-1.5 gives every image the same count (576); Qwen-VL's count follows the image's size under the
processor's resize rule. The datasets check lengths against `model_max_length` when they are built, so
a count comes from the file's header (its size) through the family's `image_token_count`, once per file.
The collators check it against the count the processor really gives (`family.image_token_counts`).
"""

from collections.abc import Callable

from PIL import Image

from post_decoder.errors import InputError


class ImageTokens:
    """`of(path)`: an image file's token count. Built from one count for every image (`ImageTokens(576)`) or
    from a function of a PIL image whose size is read, not its pixels (`ImageTokens(count_of_image)`)."""

    def __init__(self, count: "int | Callable[[Image.Image], int] | ImageTokens"):
        if isinstance(count, ImageTokens):
            count = count.constant if count.constant is not None else count.count_of_image
        self.constant = count if isinstance(count, int) else None
        self.count_of_image = None if isinstance(count, int) else count
        self._counts: dict[str, int] = {}

    @classmethod
    def for_model(cls, family, config, image_processor) -> "ImageTokens":
        """The family's count: one for every image when it has one (`image_token_count(config)`), else each
        image's under `image_processor`'s resize rule."""
        try:
            return cls(family.image_token_count(config))
        except ValueError:  # a family whose count varies refuses to give one without the image
            return cls(lambda image: family.image_token_count(config, image, image_processor))

    def of(self, path: str) -> int:
        if self.constant is not None:
            return self.constant
        if path not in self._counts:
            try:
                with Image.open(path) as image:  # the header only: PIL decodes the pixels on first access
                    self._counts[path] = int(self.count_of_image(image))
            except OSError as error:
                raise InputError(f"cannot read the size of image {path}: {error}") from error
        return self._counts[path]

    def key(self, path: str | None) -> list[int]:
        """What a cache key records of a sample's image count (LLaVA's keys: its one count, image or not)."""
        if self.constant is not None:
            return [self.constant]
        return [self.of(path)] if path else []
