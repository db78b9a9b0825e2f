"""Image files of training samples: checked once when a dataset is built, opened lazily per item.

The check decodes each file whole (the way it is served): `Image.verify()` alone passes a truncated
JPEG, which then stops a run mid-training. It runs once per distinct file, in threads (PIL decodes
without holding the GIL; the files are often on network disks).
"""

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from post_decoder.errors import InputError
from post_decoder.images import open_image


def image_problem(path: str) -> tuple[str, str] | None:
    """Why `path` cannot serve as an image, as (reason, detail), or None when it can."""
    if not os.path.isfile(path):
        return "missing image", path
    try:
        open_image(path)
    except FileNotFoundError:  # removed while we looked
        return "missing image", path
    except Exception as error:  # PIL raises many types on a corrupt file; any of them means unusable
        detail = str(error) if isinstance(error, InputError) else f"{path}: {type(error).__name__}: {error}"
        return "unreadable image", detail.removeprefix("cannot read image ")
    return None


def image_problems(paths, workers: int = 16) -> dict[str, tuple[str, str] | None]:
    """`image_problem` for each distinct path."""
    distinct = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(distinct, pool.map(image_problem, distinct)))


def load_image(path: str, sample_id, source: str = "") -> Image.Image:
    """An RGB image; a file that went bad after the dataset was built names the data file, sample and image."""
    try:
        return open_image(path)
    except (FileNotFoundError, ValueError) as error:
        where = f"{source}: " if source else ""
        raise InputError(f"{where}sample {sample_id}: {error} (it passed the check when the run started)") from error


def with_readable_images(samples, skips, check_images: bool = True):
    """The samples whose image (if any) exists and PIL can decode; the others are counted in `skips`."""
    problems = image_problems(sample.image for sample in samples if sample.image) if check_images else {}
    for sample in samples:
        problem = problems.get(sample.image) if sample.image else None
        if problem:
            skips.skip(sample.sample_id, problem[0], problem[1], sample.source)
            continue
        yield sample
