"""eval/build_pope.py against POPE's rules: statistics over the drawn images, first-seen ties, one
seeded generator in POPE's order, and one-line errors for bad annotation files."""

import json
import os
import random
import subprocess
import sys

import pytest

from eval.build_pope import AnnotatedImage, ObjectStatistics, build_pope_sets, main, pope_set, question_text
from eval.pope_questions import read_questions
from post_decoder.errors import run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGES = {  # image id -> objects in annotation order (repeats are further instances)
    1: ["fork", "knife", "dog", "fork"],
    2: ["fork", "knife", "cat"],
    3: ["fork", "knife", "apple", "car"],
    4: ["dog", "cat"],  # two objects: never asked about
    5: ["umbrella", "car", "orange"],
    6: ["fork", "car", "umbrella"],
}


def write_coco(path, images: dict[int, list[str]]) -> str:
    categories = sorted({name for names in images.values() for name in names})
    ids = {name: index + 1 for index, name in enumerate(categories)}
    content = {
        "images": [{"id": i, "file_name": f"img_{i:03d}.jpg", "width": 64, "height": 64} for i in images],
        "categories": [{"id": ids[name], "name": name, "supercategory": "thing"} for name in categories],
        "annotations": [
            {
                "id": 1000 * image + k,
                "image_id": image,
                "category_id": ids[name],
                "bbox": [0, 0, 4, 4],
                "area": 16,
                "iscrowd": 0,
            }
            for image, names in images.items()
            for k, name in enumerate(names)
        ],
    }
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture
def annotations(tmp_path):
    return write_coco(tmp_path / "instances.json", IMAGES)


def negatives_by_image(questions) -> dict[int, list[str]]:
    grouped = {}
    for question in questions:
        if question["label"] == "no":
            grouped.setdefault(int(question["image"][4:7]), []).append(object_name(question["text"]))
    return grouped


def object_name(text: str) -> str:
    return text.split(" ", 3)[3].rsplit(" in the image?", 1)[0]


def image(image_id, *objects):
    return AnnotatedImage(image_id, f"img_{image_id:03d}.jpg", tuple(objects))


def test_every_set_asks_the_first_three_objects_then_an_absent_one(annotations):
    sets = build_pope_sets(annotations, num_images=5, seed=0)
    assert list(sets) == ["random", "popular", "adversarial"]
    for questions in sets.values():
        assert [q["question_id"] for q in questions] == list(range(1, 31))
        assert [q["label"] for q in questions] == ["yes", "no"] * 15
        asked = {}
        for question in questions:
            asked.setdefault(int(question["image"][4:7]), []).append(
                (object_name(question["text"]), question["label"])
            )
        assert sorted(asked) == [1, 2, 3, 5, 6]  # image 4 has fewer than 3 objects
        for image_id, pairs in asked.items():
            objects = IMAGES[image_id]
            assert [name for name, label in pairs if label == "yes"] == list(dict.fromkeys(objects))[:3]
            negatives = [name for name, label in pairs if label == "no"]
            assert len(set(negatives)) == 3 and not set(negatives) & set(objects)


def test_frequency_counts_the_drawn_images_only_and_ties_keep_first_seen_order():
    drawn = [
        image(1, "cup", "bowl", "kite"),
        image(2, "bowl", "cup", "dog"),
        image(3, "dog", "kite", "bowl"),
        image(4, "sink", "oven", "tent"),
    ]
    statistics = ObjectStatistics(drawn)
    # bowl 3; cup, kite and dog 2 each, in the order first met (not alphabetical); then the rest
    assert statistics.by_frequency == ["bowl", "cup", "kite", "dog", "sink", "oven", "tent"]
    assert statistics.seen == ["cup", "bowl", "kite", "dog", "sink", "oven", "tent"]
    negatives = negatives_by_image(pope_set("popular", drawn, statistics, random.Random(0)))
    assert negatives == {
        1: ["dog", "sink", "oven"],
        2: ["kite", "sink", "oven"],
        3: ["cup", "sink", "oven"],
        4: ["bowl", "cup", "kite"],
    }


def test_objects_of_images_not_drawn_are_never_asked_about(tmp_path):
    # Cars fill the file, but only in images with two objects, which POPE never draws.
    images = {
        1: ["cup", "bowl", "kite"],
        2: ["bowl", "cup", "dog"],
        3: ["dog", "kite", "bowl", "sink"],
        4: ["oar", "tent", "cup"],
    }
    images.update({10 + i: ["car", "bus"] for i in range(6)})
    for seed in range(5):
        sets = build_pope_sets(write_coco(tmp_path / "instances.json", images), num_images=4, seed=seed)
        asked = {object_name(q["text"]) for questions in sets.values() for q in questions}
        assert not asked & {"car", "bus"}
        assert {object_name(q["text"]) for q in sets["popular"] if q["label"] == "no"} >= {"bowl"}


def test_adversarial_ranks_by_co_occurrence_in_first_seen_order_then_draws_at_random():
    drawn = [
        image(1, "fork", "knife", "cup"),
        image(2, "fork", "plate", "knife"),
        image(3, "fork", "cup", "dog"),
        image(4, "tent", "oar", "fork"),
    ]
    statistics = ObjectStatistics(drawn)
    # fork meets knife 2x, cup 2x (knife first), then plate, dog, tent, oar once each, in that order
    assert statistics.by_co_occurrence["fork"] == ["knife", "cup", "plate", "dog", "tent", "oar"]
    assert statistics.by_co_occurrence["knife"] == ["fork", "cup", "plate"]
    for seed in range(10):
        questions = pope_set(
            "adversarial",
            [image(5, "fork", "sink", "oven"), image(6, "tent", "oar", "knife")],
            statistics,
            random.Random(seed),
        )
        negatives = negatives_by_image(questions)
        assert negatives[5][0] == "knife"
        assert set(negatives[5][1:]) <= {"cup", "plate", "dog", "tent", "oar"}  # sink was never seen: random
        # tent meets oar (present) and fork; oar's companions are all taken: random; knife's: fork taken, cup, plate
        tent, oar, knife = negatives[6]
        assert tent == "fork" and oar in {"cup", "plate", "dog"}
        assert knife == ("plate" if oar == "cup" else "cup")


def test_random_negatives_come_from_the_objects_of_the_drawn_images():
    drawn = [image(1, "cup", "bowl", "kite"), image(2, "bowl", "dog", "sink"), image(3, "oar", "cup", "tent")]
    statistics = ObjectStatistics(drawn)
    assert statistics.seen == ["cup", "bowl", "kite", "dog", "sink", "oar", "tent"]
    drawn_for_image_1 = set()
    for seed in range(20):
        negatives = negatives_by_image(pope_set("random", drawn, statistics, random.Random(seed)))
        assert set(negatives[1]) <= {"dog", "sink", "oar", "tent"} and len(set(negatives[1])) == 3
        assert set(negatives[2]) <= {"cup", "kite", "oar", "tent"} and len(set(negatives[2])) == 3
        drawn_for_image_1 |= set(negatives[1])
    assert drawn_for_image_1 == {"dog", "sink", "oar", "tent"}


# A small file run through RUCAIBox/POPE's own main.py (utils.pope) after random.seed(0), with the
# same objects per image (its segmentation input written from our reader): the negatives it chose.
UPSTREAM_IMAGES = {
    1: ["person", "dog", "frisbee"],
    2: ["person", "car", "umbrella", "handbag"],
    3: ["cat", "couch"],
    4: ["car", "truck", "person", "traffic light"],
    5: ["apple", "orange", "banana", "bowl"],
    6: ["person", "umbrella", "bench", "person"],
    7: ["dog", "cat", "couch", "remote"],
    8: ["zebra", "giraffe", "elephant"],
    9: ["person", "skis"],
    10: ["bowl", "banana", "person", "cup"],
    11: ["car", "person", "bus", "car"],
    12: ["oven", "sink", "person", "refrigerator"],
    13: ["dog", "person", "car"],
    14: ["kite", "person", "umbrella"],
}
UPSTREAM_NEGATIVES = {  # --img_num 8, random.seed(0): image id -> the three "no" objects, in POPE's order
    "random": [
        (8, ["cup", "dog", "traffic light"]),
        (14, ["bowl", "bench", "elephant"]),
        (1, ["banana", "truck", "kite"]),
        (6, ["cup", "orange", "banana"]),
        (10, ["dog", "truck", "car"]),
        (5, ["traffic light", "bench", "giraffe"]),
        (4, ["zebra", "elephant", "apple"]),
        (13, ["zebra", "truck", "banana"]),
    ],
    "popular": [
        (8, ["person", "umbrella", "dog"]),
        (14, ["dog", "bowl", "banana"]),
        (1, ["umbrella", "bowl", "banana"]),
        (6, ["dog", "bowl", "banana"]),
        (10, ["umbrella", "dog", "car"]),
        (5, ["person", "umbrella", "dog"]),
        (4, ["umbrella", "dog", "bowl"]),
        (13, ["umbrella", "bowl", "banana"]),
    ],
    "adversarial": [
        (8, ["frisbee", "banana", "dog"]),  # zebra's companions are all in the image: a random draw
        (14, ["frisbee", "dog", "bench"]),
        (1, ["umbrella", "car", "elephant"]),
        (6, ["dog", "kite", "elephant"]),
        (10, ["apple", "orange", "umbrella"]),
        (5, ["traffic light", "truck", "person"]),
        (4, ["dog", "kite", "umbrella"]),
        (13, ["frisbee", "umbrella", "truck"]),
    ],
}


def test_the_sets_equal_popes_own_code_on_the_same_file_and_seed(tmp_path):
    sets = build_pope_sets(write_coco(tmp_path / "instances.json", UPSTREAM_IMAGES), num_images=8, seed=0)
    for set_name, expected in UPSTREAM_NEGATIVES.items():
        assert list(negatives_by_image(sets[set_name]).items()) == expected, set_name
        assert [q["image"] for q in sets[set_name][::6]] == [f"img_{i:03d}.jpg" for i, _ in expected]  # drawn order
    # popular ranks person 6, then umbrella, dog, bowl, banana, car 2 each in first-seen order; over the
    # whole file car (4 images) would come second
    assert negatives_by_image(sets["popular"])[10] == ["umbrella", "dog", "car"]


def test_the_sets_are_seeded_and_reproducible(tmp_path):
    path = write_coco(tmp_path / "instances.json", UPSTREAM_IMAGES)
    assert build_pope_sets(path, num_images=5, seed=1) == build_pope_sets(path, num_images=5, seed=1)
    images = {
        seed: tuple(q["image"] for q in build_pope_sets(path, num_images=5, seed=seed)["random"]) for seed in range(6)
    }
    assert len(set(images.values())) > 1


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
    assert sorted(os.listdir(tmp_path / "pope")) == [
        f"coco_pope_{s}.json" for s in ("adversarial", "popular", "random")
    ]
    for set_name in ("random", "popular", "adversarial"):
        questions = read_questions(str(tmp_path / "pope" / f"coco_pope_{set_name}.json"))
        assert len(questions) == 24


def run_cli(capsys, *arguments) -> tuple[int, str]:
    """The command's entry point as `python -m eval.build_pope` runs it: exit code and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(main, list(arguments), program="build_pope.py")
    return exit_info.value.code, capsys.readouterr().err


def bad_file_cases(tmp_path, annotations):
    with open(annotations) as handle:
        content = json.load(handle)
    unknown_category = json.loads(json.dumps(content))
    unknown_category["annotations"][4]["category_id"] = 99
    missing_key = json.loads(json.dumps(content))
    del missing_key["annotations"][2]["image_id"]
    no_file_name = json.loads(json.dumps(content))
    del no_file_name["images"][1]["file_name"]
    text = json.dumps(content)
    cases = {
        "unknown_category.json": (
            json.dumps(unknown_category),
            "annotation 2000 (image 2) has category_id 99, which 'categories' does not list",
        ),
        "missing_key.json": (json.dumps(missing_key), "annotation 1002 has no 'image_id'"),
        "no_file_name.json": (json.dumps(no_file_name), "image 2 has no 'file_name'"),
        "truncated.json": (text[: len(text) // 2], "not valid JSON at line 1 column"),
        "latin1.json": (None, "not UTF-8 text (byte"),
        "list.json": ("[]", "not a COCO instances file"),
    }
    for name, (body, _) in cases.items():
        if body is None:
            (tmp_path / name).write_bytes(text.replace('"fork"', '"fourchette caf\u00e9"').encode("latin-1"))
        else:
            (tmp_path / name).write_text(body)
    return {str(tmp_path / name): message for name, (_, message) in cases.items()}


def test_bad_annotation_files_are_one_line_errors_with_exit_code_2(annotations, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POST_DECODER_DEBUG", raising=False)
    for path, message in bad_file_cases(tmp_path, annotations).items():
        code, stderr = run_cli(capsys, "--annotations", path, "--out", str(tmp_path / "pope"))
        assert code == 2, (path, stderr)
        assert stderr.startswith(f"build_pope.py: error: {path}: ") and message in stderr, stderr
        assert stderr.count("\n") == 1
        assert not os.path.exists(tmp_path / "pope")
    code, stderr = run_cli(capsys, "--annotations", str(tmp_path / "absent.json"), "--out", str(tmp_path / "pope"))
    assert code == 2 and "absent.json: cannot be read (No such file or directory)" in stderr


def test_no_object_left_to_ask_about_is_an_error_not_an_endless_loop(tmp_path, capsys, monkeypatch):
    # POPE's loop would spin forever: the three drawn images hold every object seen.
    monkeypatch.delenv("POST_DECODER_DEBUG", raising=False)
    path = write_coco(tmp_path / "instances.json", {1: ["a", "b", "c"], 2: ["a", "b", "c", "d"], 3: ["a", "d", "c"]})
    code, stderr = run_cli(capsys, "--annotations", path, "--out", str(tmp_path / "pope"), "--num-images", "3")
    assert code == 2 and stderr.count("\n") == 1
    assert "holds or was asked about every one of the 4 objects seen in the drawn images" in stderr


@pytest.mark.slow
def test_the_command_line_prints_one_line_and_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "truncated.json").write_text('{"images": [{"id": 1, "file_na')
    environment = {key: value for key, value in os.environ.items() if key != "POST_DECODER_DEBUG"}
    path = tmp_path / "truncated.json"
    command = [sys.executable, "-m", "eval.build_pope", "--annotations", str(path), "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environment, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "not valid JSON at line 1 column 23 (Unterminated string starting at); is the file complete?"
    assert result.stderr == f"build_pope.py: error: {path}: {expected}\n"
