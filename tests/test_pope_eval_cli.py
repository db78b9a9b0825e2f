import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from eval import pope_eval_post
from eval.answering import PrefixCachedAnswerer
from eval.pope_report import main as report_main
from eval.pope_scoring import score_answers
from post_decoder.errors import InputError
from tests.helpers import free_port
from tests.helpers.charts import BLUE, ORANGE, assert_pope_chart
from tests.helpers.pope_workspace import cli_args, read_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_full_run_answers_every_question_and_scores_them(pope_workspace, tmp_path):
    answers = tmp_path / "answers.jsonl"
    metrics = pope_eval_post.main(cli_args(pope_workspace, answers))
    records = read_lines(answers)
    assert len(records) == 24 and not os.path.exists(f"{answers}.part0")
    assert {record["set"] for record in records} == {"random", "popular", "adversarial"}
    assert set(records[0]) == {"set", "question_id", "image", "prompt", "answer", "model_id"}
    by_question = {}
    for record in records:  # the same question about the same image gets the same answer in every set
        by_question.setdefault((record["image"], record["prompt"]), set()).add(record["answer"])
    assert all(len(answers_given) == 1 for answers_given in by_question.values())
    with open(tmp_path / "answers_metrics.json") as handle:
        written = json.load(handle)
    assert written == metrics and sorted(written) == ["adversarial", "popular", "random"]
    questions = [json.loads(line) for line in open(pope_workspace / "pope" / "coco_pope_popular.json")]
    expected = score_answers(questions, {r["question_id"]: r["answer"] for r in records if r["set"] == "popular"})
    assert written["popular"] == expected.as_dict()
    # the chart beside them: accuracy and F1 per set, one bar each, as tall as the metrics
    assert_pope_chart(tmp_path / "answers_metrics.png", {BLUE: metrics})


def test_an_interrupted_run_resumes_where_it_stopped(pope_workspace, tmp_path, monkeypatch):
    complete = tmp_path / "complete.jsonl"
    pope_eval_post.main(cli_args(pope_workspace, complete))
    lines = open(complete).read().splitlines(keepends=True)
    interrupted = tmp_path / "interrupted.jsonl"
    shutil.copy(f"{complete}.settings.json", f"{interrupted}.settings.json")  # the same model and settings
    # Rank 0 had written 8 answers and was cut off in the middle of the 9th line.
    with open(f"{interrupted}.part0", "w") as handle:
        handle.writelines(lines[:8])
        handle.write(lines[8][:10])
    asked = []
    original = PrefixCachedAnswerer.answer
    monkeypatch.setattr(
        PrefixCachedAnswerer, "answer", lambda self, image, texts: asked.append(texts) or original(self, image, texts)
    )
    pope_eval_post.main(cli_args(pope_workspace, interrupted, "--resume"))
    assert sorted(map(json.dumps, read_lines(interrupted))) == sorted(map(json.dumps, read_lines(complete)))
    pending = {(json.loads(line)["image"], json.loads(line)["prompt"]) for line in lines[8:]}
    assert sum(map(len, asked)) == len(pending)  # each distinct pending question once; nothing answered twice


def test_existing_answers_are_never_overwritten_without_resume(pope_workspace, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"set": "random", "question_id": 1, "answer": "Yes"}\n')
    with pytest.raises(InputError, match=r"answers.jsonl \(or its parts\) exists: pass --resume"):
        pope_eval_post.main(cli_args(pope_workspace, answers))
    assert answers.read_text() == '{"set": "random", "question_id": 1, "answer": "Yes"}\n'


def test_a_missing_image_is_named_or_counted(pope_workspace, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("img0.png", "img1.png", "img3.png"):
        (images / name).write_bytes((pope_workspace / "images" / name).read_bytes())
    args = cli_args(pope_workspace, tmp_path / "a.jsonl")
    args[args.index("--coco_path") + 1] = str(images)
    question_file = pope_workspace / "pope" / "coco_pope_random.json"
    expected = (
        f"image {images / 'img2.png'} is missing (question_id 5 of {question_file} asks about it); pass --skip-missing"
    )
    with pytest.raises(InputError, match=re.escape(expected)):
        pope_eval_post.main(args)
    args[args.index("--answers-file") + 1] = str(tmp_path / "b.jsonl")
    metrics = pope_eval_post.main(args + ["--skip-missing"])
    assert "skipped 6 questions about 1 missing images" in capsys.readouterr().out
    assert all(m["tp"] + m["fp"] + m["tn"] + m["fn"] == 6 for m in metrics.values())


def test_score_only_and_compare(pope_workspace, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    first = pope_eval_post.main(cli_args(pope_workspace, answers))
    again = pope_eval_post.main(
        [
            "--score-only",
            "--answers-file",
            str(answers),
            "--pope_path",
            str(pope_workspace / "pope"),
            "--set",
            "all",
            "--metrics-file",
            str(tmp_path / "again.json"),
        ]
    )
    assert again == first
    report_main(
        [
            "--compare",
            f"base={tmp_path / 'answers_metrics.json'}",
            f"trained={tmp_path / 'again.json'}",
            "--chart",
            str(tmp_path / "c.png"),
        ]
    )
    table = capsys.readouterr().out
    assert "base" in table and "trained" in table and "mean F1" in table
    assert_pope_chart(tmp_path / "c.png", {BLUE: first, ORANGE: again})  # a bar per run and set, side by side


@pytest.mark.slow
def test_torchrun_on_two_processes_writes_the_same_answers_as_one(pope_workspace, tmp_path):
    one = tmp_path / "one.jsonl"
    pope_eval_post.main(cli_args(pope_workspace, one))
    two = tmp_path / "two.jsonl"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        os.path.join(ROOT, "eval", "pope_eval_post.py"),
        *cli_args(pope_workspace, two),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert open(two).read() == open(one).read()


def test_a_malformed_answer_line_before_the_end_is_named(tmp_path):
    from eval.answer_files import read_answers

    path = tmp_path / "answers.jsonl"
    first, last = (
        '{"set": "random", "question_id": 1, "answer": "Yes"}',
        '{"set": "random", "question_id": 2, "answer": "No"}',
    )
    path.write_text(f"{first}\n{{broken\n{last}\n")
    with pytest.raises(ValueError, match=r"answers.jsonl:2: not a JSON object"):
        read_answers([str(path)])
    path.write_text('{"set": "random", "answer": "Yes"}\n')
    with pytest.raises(ValueError, match=r"answers.jsonl:1: an answer needs question_id and answer"):
        read_answers([str(path)])


def test_compare_names_a_missing_or_foreign_metrics_file(tmp_path, capsys):
    from post_decoder.errors import run_command

    (tmp_path / "other.json").write_text(json.dumps({"random": {"loss": 1.0}}))
    for name, message in (("none.json", "no such metrics file"), ("other.json", "not a POPE metrics file")):
        with pytest.raises(SystemExit) as exit_info:
            run_command(report_main, ["--compare", f"run={tmp_path / name}"], "pope_report.py")
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"pope_report.py: error: --compare: {tmp_path / name}: {message}" + (
            "\n" if name == "none.json" else " (set -> accuracy, precision, recall, f1, yes_ratio)\n"
        )
