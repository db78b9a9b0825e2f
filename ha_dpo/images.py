"""Image files of training samples: checked once when a dataset is built, opened lazily per item."""

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from post_decoder.image_processing import open_image


def image_problem(path: str) -> tuple[str, str] | None:
    """Why `path` cannot serve as an image, as (reason, detail), or None when it can."""
    if not os.path.isfile(path):
        return "missing image", path
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types on a corrupt file; any of them means unusable
        return "unreadable image", f"{path}: {type(error).__name__}: {error}"
    return None


def image_problems(paths, workers: int = 16) -> dict[str, tuple[str, str] | None]:
    """`image_problem` for each distinct path; threads, as the work is file I/O (often on network disks)."""
    distinct = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(distinct, pool.map(image_problem, distinct)))


def load_image(path: str, sample_id) -> Image.Image:
    """An RGB image; a file that went bad after the dataset was built names the sample and the file."""
    try:
        return open_image(path)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"sample {sample_id}: {error}") from error


def with_readable_images(samples, skips, check_images: bool = True):
    """The samples whose image (if any) exists and PIL can read; the others are counted in `skips`."""
    problems = image_problems(sample.image for sample in samples if sample.image) if check_images else {}
    for sample in samples:
        problem = problems.get(sample.image) if sample.image else None
        if problem:
            skips.skip(sample.sample_id, problem[0], problem[1], sample.source)
            continue
        yield sample
