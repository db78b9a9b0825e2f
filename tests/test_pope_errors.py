"""Bad input to the POPE evaluator: one line on stderr naming the file, line or flag, exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from eval import pope_eval_post
from post_decoder.errors import run_command
from tests.helpers.pope_workspace import cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_error(argv, capsys) -> str:
    """Run the command as its entry point does; return its one-line error."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(pope_eval_post.main, argv, "pope_eval_post.py")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()  # progress bars may come first
    assert lines[-1].startswith("pope_eval_post.py: error: ") and "Traceback" not in "".join(lines), lines
    return lines[-1].removeprefix("pope_eval_post.py: error: ")


def with_question_file(pope_workspace, tmp_path, content: bytes) -> list[str]:
    """cli_args with a POPE folder whose random set is `content`."""
    pope = tmp_path / "pope"
    shutil.copytree(pope_workspace / "pope", pope)
    (pope / "coco_pope_random.json").write_bytes(content)
    args = cli_args(pope_workspace, tmp_path / "answers.jsonl")
    args[args.index("--pope_path") + 1] = str(pope)
    return args


def first_lines(pope_workspace, count=2) -> bytes:
    return b"".join((pope_workspace / "pope" / "coco_pope_random.json").read_bytes().splitlines(keepends=True)[:count])


@pytest.mark.parametrize(
    "flag, value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--max-new-tokens", "0")]
)  # fmt: skip
def test_a_count_below_one_is_refused(pope_workspace, tmp_path, capsys, flag, value):
    args = cli_args(pope_workspace, tmp_path / "answers.jsonl")
    args[args.index(flag) + 1] = value
    assert cli_error(args, capsys) == f"{flag} must be at least 1, got {value}"


def test_an_image_that_is_not_a_name(pope_workspace, tmp_path, capsys):
    bad = json.dumps({"question_id": 3, "image": 12345, "text": "Is there a dog?", "label": "yes"}).encode() + b"\n"
    error = cli_error(with_question_file(pope_workspace, tmp_path, first_lines(pope_workspace) + bad), capsys)
    assert error == f"{tmp_path / 'pope' / 'coco_pope_random.json'}:3: image must be a non-empty string, got 12345"


def test_a_question_file_that_is_not_utf8(pope_workspace, tmp_path, capsys):
    content = (
        first_lines(pope_workspace)
        + b'{"question_id": 3, "image": "img0.png", "text": "Is there a caf\xe9?", "label": "no"}\n'
    )
    error = cli_error(with_question_file(pope_workspace, tmp_path, content), capsys)
    assert error.startswith(
        f"{tmp_path / 'pope' / 'coco_pope_random.json'}:3: not UTF-8 text (invalid continuation byte"
    )


def test_a_truncated_question_file(pope_workspace, tmp_path, capsys):
    content = first_lines(pope_workspace, 3)[:-20]  # cut inside the third line, as an interrupted copy leaves it
    error = cli_error(with_question_file(pope_workspace, tmp_path, content), capsys)
    assert error.startswith(f"{tmp_path / 'pope' / 'coco_pope_random.json'}:3: not a JSON object (")
    assert error.endswith("the file looks truncated: copy it again")


def test_a_missing_question_file(pope_workspace, tmp_path, capsys):
    args = cli_args(pope_workspace, tmp_path / "answers.jsonl")
    args[args.index("--pope_path") + 1] = str(tmp_path)
    assert cli_error(args, capsys).startswith(f"{tmp_path / 'coco_pope_random.json'}: no such POPE question file")


def test_a_missing_image_names_its_question_and_the_way_on(pope_workspace, tmp_path, capsys):
    images = tmp_path / "coco"
    shutil.copytree(pope_workspace / "images", images / "val2014")  # HA-DPO's --coco_path is the folder above
    args = cli_args(pope_workspace, tmp_path / "answers.jsonl")
    args[args.index("--coco_path") + 1] = str(images)
    question_file = pope_workspace / "pope" / "coco_pope_random.json"
    assert cli_error(args, capsys) == (
        f"image {images / 'img0.png'} is missing (question_id 1 of {question_file} asks "
        f"about it) (--coco_path is the images' own folder: {images / 'val2014'}?); pass --skip-missing to count and "
        "skip such images"
    )


def test_a_corrupt_image_is_named(pope_workspace, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(pope_workspace / "images", images)
    (images / "img0.png").write_bytes(b"not a png")
    args = cli_args(pope_workspace, tmp_path / "answers.jsonl")
    args[args.index("--coco_path") + 1] = str(images)
    error = cli_error(args, capsys)
    assert error.startswith(f"image {images / 'img0.png'} cannot be read (cannot identify image file")
    assert error.endswith("coco_pope_random.json asks about it); pass --skip-missing to count and skip such images")


@pytest.mark.slow
def test_the_script_itself_exits_2_with_one_line(tmp_path):
    script = os.path.join(ROOT, "eval", "pope_eval_post.py")
    command = [sys.executable, script, "--score-only", "--pope_path", str(tmp_path), "--answers-file", "a.jsonl"]
    command += ["--batch-size", "0"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert (result.returncode, result.stderr) == (
        2,
        "pope_eval_post.py: error: --batch-size must be at least 1, got 0\n",
    )
