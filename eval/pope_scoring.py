"""POPE scoring, exactly as the official `evaluate.py` of RUCAIBox/POPE:

an answer keeps its text before the first ".", loses its commas, and is split on spaces; if
"No", "not" or "no" is among the words it means "no", otherwise "yes". "yes" is the positive class.

Answers are matched to questions by `question_id` (the official script relies on line order).
"""

from dataclasses import asdict, dataclass

from post_decoder.errors import InputError

NEGATIVE_WORDS = ("No", "not", "no")


def parse_yes_no(answer: str) -> str:
    text = answer.split(".")[0] if "." in answer else answer
    words = text.replace(",", "").split(" ")
    return "no" if any(word in words for word in NEGATIVE_WORDS) else "yes"


@dataclass
class PopeMetrics:
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict:
        return asdict(self)


def score_answers(questions: list[dict], answers: dict) -> PopeMetrics:
    """`questions` as read by `read_questions`; `answers` maps question_id -> answer text.
    A question without an answer is an error. Undefined ratios (no positive prediction) are 0."""
    unanswered = [question["question_id"] for question in questions if question["question_id"] not in answers]
    if unanswered:
        shown = ", ".join(map(str, unanswered[:10])) + (" ..." if len(unanswered) > 10 else "")
        raise InputError(f"{len(unanswered)} of {len(questions)} questions have no answer: question_id {shown}")
    tp = fp = tn = fn = 0
    for question in questions:
        predicted_yes = parse_yes_no(answers[question["question_id"]]) == "yes"
        actual_yes = question["label"] == "yes"
        tp += predicted_yes and actual_yes
        fp += predicted_yes and not actual_yes
        tn += not predicted_yes and not actual_yes
        fn += not predicted_yes and actual_yes
    total = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(
        accuracy=(tp + tn) / total,
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=(tp + fp) / total,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )
