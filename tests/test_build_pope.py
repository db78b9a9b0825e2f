import json

import pytest

from eval.build_pope import build_pope_sets, main, question_text
from eval.pope_questions import read_questions

CATEGORIES = ["fork", "knife", "dog", "cat", "apple", "car", "umbrella", "orange"]
IMAGES = {  # image id -> objects in annotation order (repeats are further instances)
    1: ["fork", "knife", "dog", "fork"],
    2: ["fork", "knife", "cat"],
    3: ["fork", "knife", "apple", "car"],
    4: ["dog", "cat"],  # two objects: never asked about
    5: ["umbrella", "car", "orange"],
    6: ["fork", "car", "umbrella"],
}
# frequency by images: fork 4, knife 3, car 3, then cat, dog, umbrella 2, apple, orange 1


@pytest.fixture
def annotations(tmp_path):
    ids = {name: index + 1 for index, name in enumerate(CATEGORIES)}
    content = {
        "images": [{"id": i, "file_name": f"toy_{i:03d}.png", "width": 64, "height": 64} for i in IMAGES],
        "categories": [{"id": ids[name], "name": name, "supercategory": "thing"} for name in CATEGORIES],
        "annotations": [
            {"id": 100 * image + k, "image_id": image, "category_id": ids[name], "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}
            for image, names in IMAGES.items()
            for k, name in enumerate(names)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return str(path)


def by_image(questions):
    grouped = {}
    for question in questions:
        grouped.setdefault(question["image"], []).append((question["text"], question["label"]))
    return grouped


def names(pairs, label):
    return [text.split(" ", 3)[3].rsplit(" in the image?", 1)[0] for text, lab in pairs if lab == label]


def test_every_set_asks_the_first_three_objects_then_an_absent_one(annotations):
    sets = build_pope_sets(annotations, num_images=5, seed=0)
    assert sorted(sets) == ["adversarial", "popular", "random"]
    for questions in sets.values():
        assert [q["question_id"] for q in questions] == list(range(1, 31))
        assert [q["label"] for q in questions] == ["yes", "no"] * 15
        grouped = by_image(questions)
        assert "toy_004.png" not in grouped  # fewer than 3 objects
        for image, pairs in grouped.items():
            objects = IMAGES[int(image[4:7])]
            assert names(pairs, "yes") == list(dict.fromkeys(objects))[:3]
            negatives = names(pairs, "no")
            assert len(set(negatives)) == 3 and not set(negatives) & set(objects)
        assert {image for image in grouped} == {f"toy_{i:03d}.png" for i in (1, 2, 3, 5, 6)}


def test_popular_negatives_are_the_most_frequent_absent_objects(annotations):
    grouped = by_image(build_pope_sets(annotations, num_images=5)["popular"])
    assert names(grouped["toy_005.png"], "no") == ["fork", "knife", "cat"]
    assert names(grouped["toy_001.png"], "no") == ["car", "cat", "umbrella"]


def test_adversarial_negatives_co_occur_most_with_the_positive(annotations):
    grouped = by_image(build_pope_sets(annotations, num_images=5)["adversarial"])
    # fork co-occurs with knife 3x, car 2x; knife then with apple/car/cat/dog once (car taken); dog with cat.
    assert names(grouped["toy_001.png"], "no") == ["car", "apple", "cat"]
    # umbrella: car 2x (present), then fork; car: fork and umbrella 2x (taken), then apple;
    # orange co-occurs only with umbrella and car, both present: a random absent, unasked object.
    umbrella, car, orange = names(grouped["toy_005.png"], "no")
    assert (umbrella, car) == ("fork", "apple")
    assert orange in {"knife", "dog", "cat"}


def test_the_sets_are_seeded_and_reproducible(annotations):
    assert build_pope_sets(annotations, num_images=3, seed=1) == build_pope_sets(annotations, num_images=3, seed=1)
    images = {seed: {q["image"] for q in build_pope_sets(annotations, num_images=3, seed=seed)["random"]} for seed in range(6)}
    assert len({frozenset(chosen) for chosen in images.values()}) > 1


def test_articles_are_a_and_an_without_touching_other_words():
    assert question_text("apple") == "Is there an apple in the image?"
    assert question_text("umbrella") == "Is there an umbrella in the image?"
    assert question_text("dog") == "Is there a dog in the image?"
    assert question_text("traffic light") == "Is there a traffic light in the image?"


def test_too_few_images_is_an_error(annotations):
    with pytest.raises(ValueError, match="only 5 images have 3 or more objects; --num-images asks for 6"):
        build_pope_sets(annotations, num_images=6)


def test_the_cli_writes_files_the_evaluator_reads(annotations, tmp_path):
    main(["--annotations", annotations, "--out", str(tmp_path / "pope"), "--num-images", "4"])
    for set_name in ("random", "popular", "adversarial"):
        questions = read_questions(str(tmp_path / "pope" / f"coco_pope_{set_name}.json"))
        assert len(questions) == 24
