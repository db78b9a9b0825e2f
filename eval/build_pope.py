"""Build the three POPE question sets from any COCO-format instance annotations, by POPE's rules.

    python eval/build_pope.py --annotations instances_val2014.json --out pope/ --num-images 500 --seed 0

- images with at least 3 distinct objects (categories) are eligible; `--num-images` of them are
  drawn once, seeded, and shared by all three sets;
- per image, its first 3 objects (annotation order) become "yes" questions, each followed by one
  "no" question about an object that is not in the image and not yet asked about it;
- the "no" object is drawn uniformly from all objects in the annotations (random), is the most
  frequent one (popular: by number of images), or co-occurs most with the "yes" object
  (adversarial), falling back to a random draw when none is left;
- questions read "Is there a/an {object} in the image?"; ids count from 1 in each file.
"""

import argparse
import json
import os
import random
from collections import Counter, defaultdict

from pycocotools.coco import COCO

from eval.pope_questions import POPE_SETS

TEMPLATE = "Is there {article} {name} in the image?"


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def question_text(name: str) -> str:
    return TEMPLATE.format(article=article(name), name=name)


def objects_per_image(coco: COCO) -> dict[int, list[str]]:
    """Each image's distinct category names, in the order of their first annotation."""
    names = {category["id"]: category["name"] for category in coco.loadCats(coco.getCatIds())}
    objects = {}
    for image_id in coco.getImgIds():
        seen = []
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            name = names[annotation["category_id"]]
            if name not in seen:
                seen.append(name)
        objects[image_id] = seen
    return objects


class NegativeSampler:
    """Chooses the "no" object for one "yes" object of an image, by the set's rule."""

    def __init__(self, objects: dict[int, list[str]], seed: int):
        self.all_objects = sorted({name for names in objects.values() for name in names})
        frequency = Counter(name for names in objects.values() for name in names)
        self.by_frequency = sorted(self.all_objects, key=lambda name: (-frequency[name], name))
        co_occurrence = defaultdict(Counter)
        for names in objects.values():
            for name in names:
                co_occurrence[name].update(other for other in names if other != name)
        self.by_co_occurrence = {
            name: sorted(counts, key=lambda other: (-counts[other], other)) for name, counts in co_occurrence.items()
        }
        self.rng = random.Random(seed)

    def choose(self, set_name: str, positive: str, excluded: set[str]) -> str:
        candidates = {
            "random": [],
            "popular": self.by_frequency,
            "adversarial": self.by_co_occurrence.get(positive, []),
        }[set_name]
        for name in candidates:
            if name not in excluded:
                return name
        remaining = [name for name in self.all_objects if name not in excluded]
        if not remaining:
            raise ValueError(f"no object is left to ask a 'no' question about next to {positive!r}")
        return self.rng.choice(remaining)


def build_pope_sets(
    annotations: str, num_images: int = 500, seed: int = 0, objects_per_question_image: int = 3
) -> dict[str, list[dict]]:
    coco = COCO(annotations)
    objects = objects_per_image(coco)
    eligible = sorted(image_id for image_id, names in objects.items() if len(names) >= objects_per_question_image)
    if len(eligible) < num_images:
        raise ValueError(
            f"{annotations}: only {len(eligible)} images have {objects_per_question_image} or more objects; "
            f"--num-images asks for {num_images}"
        )
    chosen = sorted(random.Random(seed).sample(eligible, num_images))
    file_names = {image["id"]: image["file_name"] for image in coco.loadImgs(chosen)}
    sets = {}
    for set_name in POPE_SETS:
        sampler = NegativeSampler(objects, seed)
        questions = []
        for image_id in chosen:
            in_image = set(objects[image_id])
            asked = set()
            for positive in objects[image_id][:objects_per_question_image]:
                negative = sampler.choose(set_name, positive, in_image | asked)
                asked.add(negative)
                for name, label in ((positive, "yes"), (negative, "no")):
                    questions.append(
                        {
                            "question_id": len(questions) + 1,
                            "image": file_names[image_id],
                            "text": question_text(name),
                            "label": label,
                        }
                    )
        sets[set_name] = questions
    return sets


def write_pope_sets(sets: dict[str, list[dict]], out: str, dataset: str = "coco") -> list[str]:
    """One JSON object a line, as the official files; each file written whole, then renamed."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for set_name, questions in sets.items():
        path = os.path.join(out, f"{dataset}_pope_{set_name}.json")
        with open(path + ".tmp", "w") as handle:
            handle.writelines(json.dumps(question) + "\n" for question in questions)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="COCO-format instances JSON")
    parser.add_argument("--out", required=True, help="folder for {dataset}_pope_{random,popular,adversarial}.json")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="coco", help="file name prefix")
    args = parser.parse_args(argv)
    sets = build_pope_sets(args.annotations, args.num_images, args.seed)
    for path in write_pope_sets(sets, args.out, args.dataset):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
