"""Which COCO images CHAIR describes: a seeded sample of the annotated images in --coco_path, or a fixed list.

The pool is the images listed by the annotation files that describe --coco_path (at least one of their
images is in it): with COCO's annotations folder (train2014 and val2014 files) and --coco_path val2014,
the val2014 images. A file's images are all in the pool whether or not each is present, so the sample
depends on the seed and the annotations only, never on which image files happen to be there; a sampled
image that is absent is reported by `absent`. The sample is `random.Random(seed).sample` of the pool
sorted by image id: the same on every machine and Python version.
"""

import hashlib
import json
import os
import random
from dataclasses import dataclass

from eval.chair_objects import annotation_files
from post_decoder.errors import InputError


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str  # relative to --coco_path
    listed_in: str  # the annotation file that lists it (for messages)


def read_listed_images(paths: list[str]) -> dict[str, list[CocoImage]]:
    """annotation file -> the images its `images` list names (id and file_name)."""
    listed = {}
    for path in annotation_files(paths):
        try:
            with open(path, encoding="utf-8") as handle:
                coco = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: not JSON ({error})") from None
        images = coco.get("images") if isinstance(coco, dict) else None
        if not isinstance(images, list):
            raise InputError(f"{path}: no 'images' list (a COCO annotation file lists its images)")
        listed[path] = [_coco_image(entry, path) for entry in images]
    return listed


def _coco_image(entry, path: str) -> CocoImage:
    if not isinstance(entry, dict) or not _is_id(entry.get("id")) or not isinstance(entry.get("file_name"), str):
        raise InputError(f"{path}: an entry of 'images' without an integer 'id' and a 'file_name': {str(entry)[:80]}")
    return CocoImage(entry["id"], entry["file_name"], path)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_pool(listed: dict[str, list[CocoImage]], coco_path: str) -> list[CocoImage]:
    """The images of the annotation files that describe `coco_path`, one per id, sorted by id (none: empty)."""
    present = _present_names(coco_path)
    pool = {}
    for images in listed.values():
        if any(_is_present(image, coco_path, present) for image in images):
            for image in images:
                pool.setdefault(image.image_id, image)
    return [pool[image_id] for image_id in sorted(pool)]


def sample_images(pool: list[CocoImage], num_images: int, seed: int) -> list[CocoImage]:
    if num_images > len(pool):
        raise InputError(
            f"--num-images {num_images}: the annotation files list only {len(pool)} images of --coco_path; "
            f"pass --num-images {len(pool)} or fewer"
        )
    return random.Random(seed).sample(pool, num_images)


def read_image_ids(path: str) -> list[int]:
    """A file of COCO image ids, one a line (blank lines skipped); anything else names its line."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"--image-ids {path}: no such file") from None
    except UnicodeDecodeError as error:
        raise InputError(f"--image-ids {path}: not UTF-8 text ({error})") from None
    ids, line_of = [], {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit():
            raise InputError(f"{path}:{number}: {text[:40]!r} is not a COCO image id (one whole number a line)")
        image_id = int(text)
        if image_id in line_of:
            raise InputError(f"{path}:{number}: image id {image_id} again (first on line {line_of[image_id]})")
        line_of[image_id] = number
        ids.append(image_id)
    if not ids:
        raise InputError(f"--image-ids {path}: no image ids in it")
    return ids


def listed_images(listed: dict[str, list[CocoImage]], ids: list[int], ids_file: str) -> list[CocoImage]:
    """The images of `ids`, in that order; an id no annotation file lists is an error."""
    by_id = {}
    for images in listed.values():
        for image in images:
            by_id.setdefault(image.image_id, image)
    unknown = [image_id for image_id in ids if image_id not in by_id]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InputError(
            f"--image-ids {ids_file}: image id {unknown[0]}{more} is in none of the annotation files "
            f"({', '.join(listed)})"
        )
    return [by_id[image_id] for image_id in ids]


def absent(images: list[CocoImage], coco_path: str) -> list[CocoImage]:
    present = _present_names(coco_path)
    return [image for image in images if not _is_present(image, coco_path, present)]


def ids_fingerprint(images: list[CocoImage]) -> str:
    """The chosen images, told apart in a short string (the same set in any order gives the same)."""
    ids = ",".join(str(image.image_id) for image in sorted(images, key=lambda image: image.image_id))
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def _present_names(coco_path: str) -> set[str]:
    # One listing instead of a stat per image: COCO's val2014 holds 40,504 files.
    return set(os.listdir(coco_path)) if os.path.isdir(coco_path) else set()


def _is_present(image: CocoImage, coco_path: str, present: set[str]) -> bool:
    if "/" in image.file_name or os.sep in image.file_name:
        return os.path.isfile(os.path.join(coco_path, image.file_name))
    return image.file_name in present
