"""Build the three POPE question sets from any COCO-format instance annotations, by POPE's rules.

    python -m eval.build_pope --annotations instances_val2014.json --out pope/ --num-images 500 --seed 0

It follows RUCAIBox/POPE's `main.py` and `utils.py` draw for draw:
- an image's objects are its distinct categories in the order of their first annotation; the images
  with at least 3 are eligible (in the file's order) and `--num-images` of them are drawn with
  `random.Random(seed).sample`, kept in the drawn order, which is the order of the questions;
- frequency and co-occurrence are counted over the drawn images only (an object's frequency is the
  number of drawn images that hold it); ties keep first-seen order, the order in which the objects
  are met going through the drawn images;
- per image, its first 3 objects become "yes" questions, each followed by one "no" question about an
  object that is not in the image and not yet asked about it: random (drawn uniformly from the
  objects seen in the drawn images, again until one fits), popular (the most frequent first) or
  adversarial (the one that co-occurs most with the "yes" object first), the last two falling back
  to the random draw when none is left;
- one generator serves the image draw, then the random, popular and adversarial sets in turn, as
  POPE's module-level `random` does: POPE's main after `random.seed(seed)` asks the same questions.
Questions read "Is there a/an {object} in the image?" (POPE's code turns "image" into "imange" when
it writes "an"; its published files do not); ids count from 1 in each file.
"""

import argparse
import json
import os
import random
from collections import Counter
from dataclasses import dataclass

from eval.pope_questions import POPE_SETS
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError, run_command

TEMPLATE = "Is there {article} {name} in the image?"
POSITIVES_PER_IMAGE = 3  # POPE's --sample_num: "yes" questions per image, and the objects an image needs


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def question_text(name: str) -> str:
    return TEMPLATE.format(article=article(name), name=name)


@dataclass(frozen=True)
class AnnotatedImage:
    image_id: int
    file_name: str
    objects: tuple[str, ...]  # distinct category names, in the order of their first annotation


def read_annotated_images(path: str) -> list[AnnotatedImage]:
    """Every image of a COCO instances file, in the file's order, with its objects. Read by hand
    rather than by pycocotools, which answers a bad file with a KeyError deep in its index."""
    content = _read_json(path)
    if not isinstance(content, dict) or not all(
        isinstance(content.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise InputError(
            f"{path}: not a COCO instances file (a JSON object with 'images', 'annotations' and 'categories' lists)"
        )
    names = {}
    for index, category in enumerate(content["categories"]):
        where = f"category #{index + 1}"
        names[_field(path, category, "id", where)] = _field(path, category, "name", where)
    images = {}
    for index, image in enumerate(content["images"]):
        image_id = _field(path, image, "id", f"image #{index + 1}")
        if image_id in images:
            raise InputError(f"{path}: image id {image_id} is listed twice in 'images'; each image needs its own id")
        images[image_id] = (_field(path, image, "file_name", f"image {image_id}"), [])
    for index, annotation in enumerate(content["annotations"]):
        where = (
            f"annotation {annotation['id']}"
            if isinstance(annotation, dict) and "id" in annotation
            else f"annotation #{index + 1}"
        )
        image_id = _field(path, annotation, "image_id", where)
        category_id = _field(path, annotation, "category_id", where)
        if image_id not in images:
            raise InputError(
                f"{path}: {where} is on image_id {image_id}, which 'images' does not list; "
                "add the image or drop the annotation"
            )
        if category_id not in names:
            raise InputError(
                f"{path}: {where} (image {image_id}) has category_id {category_id}, which 'categories' does not list; "
                "add the category or fix the id"
            )
        objects = images[image_id][1]
        if names[category_id] not in objects:
            objects.append(names[category_id])
    return [AnnotatedImage(image_id, file_name, tuple(objects)) for image_id, (file_name, objects) in images.items()]


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}); save the annotations as UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise InputError(
            f"{path}: not valid JSON at line {error.lineno} column {error.colno} ({error.msg}); is the file complete?"
        ) from None
    except OSError as error:
        raise InputError(
            f"{path}: cannot be read ({error.strerror}); --annotations names a COCO instances JSON file"
        ) from None


def _field(path: str, entry, key: str, where: str):
    if not isinstance(entry, dict):
        raise InputError(f"{path}: {where} is not a JSON object")
    if key not in entry:
        raise InputError(f"{path}: {where} has no '{key}'; every entry of a COCO instances file needs one")
    return entry[key]


def sample_images(
    images: list[AnnotatedImage], num_images: int, rng: random.Random, source: str = "the annotations"
) -> list[AnnotatedImage]:
    """POPE's draw: `num_images` of the eligible images (file order), in the order drawn."""
    eligible = [image for image in images if len(image.objects) >= POSITIVES_PER_IMAGE]
    if num_images < 1 or len(eligible) < num_images:
        raise InputError(
            f"{source}: only {len(eligible)} images have {POSITIVES_PER_IMAGE} or more objects; "
            f"--num-images asks for {num_images}"
        )
    return rng.sample(eligible, num_images)


class ObjectStatistics:
    """POPE's statistics over the drawn images, ranked with ties in first-seen order (a stable sort
    of insertion-ordered counts, as POPE's `sorted(..., reverse=True)` on its dicts)."""

    def __init__(self, images: list[AnnotatedImage]):
        frequency = Counter()
        co_occurrence: dict[str, Counter] = {}
        for image in images:
            frequency.update(image.objects)
            for name in image.objects:
                co_occurrence.setdefault(name, Counter()).update(other for other in image.objects if other != name)
        self.seen = list(frequency)  # the pool of the random draws, in first-seen order (its index is what is drawn)
        self.by_frequency = sorted(frequency, key=frequency.get, reverse=True)
        self.by_co_occurrence = {
            name: sorted(counts, key=counts.get, reverse=True) for name, counts in co_occurrence.items()
        }

    def negative(self, set_name: str, positive: str, excluded: set[str], rng: random.Random) -> str | None:
        """The "no" object for `positive` by the set's rule; None when every seen object is excluded
        (where POPE's own loop would never end)."""
        ranked = {"random": [], "popular": self.by_frequency, "adversarial": self.by_co_occurrence.get(positive, [])}[
            set_name
        ]
        for name in ranked:
            if name not in excluded:
                return name
        if all(name in excluded for name in self.seen):
            return None
        while True:  # POPE's rejection loop: the same draws from the same generator
            name = rng.choice(self.seen)
            if name not in excluded:
                return name


def pope_set(
    set_name: str,
    images: list[AnnotatedImage],
    statistics: ObjectStatistics,
    rng: random.Random,
    source: str = "the annotations",
) -> list[dict]:
    """One set's questions: per image, each of its first objects ("yes") then its negative ("no")."""
    questions = []
    for image in images:
        excluded = set(image.objects)
        for positive in image.objects[:POSITIVES_PER_IMAGE]:
            negative = statistics.negative(set_name, positive, excluded, rng)
            if negative is None:
                raise InputError(
                    f"{source}: image {image.image_id} ({image.file_name}) holds or was asked about every one of the "
                    f"{len(statistics.seen)} objects seen in the drawn images; draw more images (--num-images)"
                )
            excluded.add(negative)
            for name, label in ((positive, "yes"), (negative, "no")):
                questions.append(
                    {
                        "question_id": len(questions) + 1,
                        "image": image.file_name,
                        "text": question_text(name),
                        "label": label,
                    }
                )
    return questions


def build_pope_sets(annotations: str, num_images: int = 500, seed: int = 0) -> dict[str, list[dict]]:
    """The three sets, from one generator in POPE's order: the image draw, random, popular, adversarial."""
    rng = random.Random(seed)
    drawn = sample_images(read_annotated_images(annotations), num_images, rng, annotations)
    statistics = ObjectStatistics(drawn)
    return {
        set_name: pope_set(set_name, drawn, statistics, rng, annotations)
        for set_name in ("random", "popular", "adversarial")
    }


def write_pope_sets(sets: dict[str, list[dict]], out: str, dataset: str = "coco") -> list[str]:
    """One JSON object a line, as the official files; each file written whole, then renamed."""
    paths = []
    for set_name in POPE_SETS:
        path = os.path.join(out, f"{dataset}_pope_{set_name}.json")
        with atomic_file(path) as temporary, open(temporary, "w") as handle:
            handle.writelines(json.dumps(question) + "\n" for question in sets[set_name])
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="COCO-format instances JSON")
    parser.add_argument("--out", required=True, help="folder for {dataset}_pope_{random,popular,adversarial}.json")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seeds the image draw and the random negatives")
    parser.add_argument("--dataset", default="coco", help="file name prefix")
    args = parser.parse_args(argv)
    sets = build_pope_sets(args.annotations, args.num_images, args.seed)
    for path in write_pope_sets(sets, args.out, args.dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_command(main, program="build_pope.py")
