"""CHAIR scoring (Rohrbach et al., 2018), as the original's compute_chair with OPERA's recall added:

- CHAIR_s: the share of descriptions that mention at least one object the image does not have;
- CHAIR_i: hallucinated mentions over all object mentions; every mention counts, so an object named twice
  is two mentions (and two hallucinations when the image lacks it);
- recall: ground-truth objects a description names, each once, summed over descriptions, over the
  ground-truth objects summed over descriptions (OPERA's "Recall");
- average length: words per description (tokens with a letter or digit; OPERA's "Len" counts every token,
  punctuation included, and a joined pair such as "hot dog" as one);
- per object: hallucinated mentions and all mentions of each category (which objects a model invents most).

Objects and ground truth come from eval.chair_objects. Undefined ratios (no mention, no ground-truth
object) are 0, as POPE's scoring does.
"""

from collections import Counter
from dataclasses import asdict, dataclass, field

from eval.chair_objects import object_mentions, word_count
from post_decoder.errors import InputError


@dataclass
class DescriptionScore:
    image_id: int
    mentions: list[tuple[str, str]]  # (word, category) per mention, in order
    hallucinated: list[tuple[str, str]]  # the mentions of categories the image does not have
    recalled: list[str]  # ground-truth categories the description names, each once
    ground_truth: list[str]
    words: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChairMetrics:
    chair_s: float
    chair_i: float
    recall: float
    avg_length: float
    descriptions: int
    hallucinated_descriptions: int
    mentions: int
    hallucinated_mentions: int
    ground_truth_objects: int
    recalled_objects: int
    hallucinations_by_object: dict[str, int] = field(default_factory=dict)  # most hallucinated first
    mentions_by_object: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def score_description(image_id: int, text: str, ground_truth: set[str]) -> DescriptionScore:
    mentions = object_mentions(text)
    return DescriptionScore(
        image_id=image_id,
        mentions=[(mention.word, mention.category) for mention in mentions],
        hallucinated=[
            (mention.word, mention.category) for mention in mentions if mention.category not in ground_truth
        ],
        recalled=sorted({mention.category for mention in mentions} & ground_truth),
        ground_truth=sorted(ground_truth),
        words=word_count(text),
    )


def _ranked(counter: Counter) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def aggregate(scores: list[DescriptionScore]) -> ChairMetrics:
    if not scores:
        raise InputError("no descriptions to score")
    mentions = sum(len(score.mentions) for score in scores)
    hallucinated = sum(len(score.hallucinated) for score in scores)
    hallucinated_descriptions = sum(1 for score in scores if score.hallucinated)
    ground_truth_objects = sum(len(score.ground_truth) for score in scores)
    recalled = sum(len(score.recalled) for score in scores)
    return ChairMetrics(
        chair_s=hallucinated_descriptions / len(scores),
        chair_i=hallucinated / mentions if mentions else 0.0,
        recall=recalled / ground_truth_objects if ground_truth_objects else 0.0,
        avg_length=sum(score.words for score in scores) / len(scores),
        descriptions=len(scores),
        hallucinated_descriptions=hallucinated_descriptions,
        mentions=mentions,
        hallucinated_mentions=hallucinated,
        ground_truth_objects=ground_truth_objects,
        recalled_objects=recalled,
        hallucinations_by_object=_ranked(Counter(category for s in scores for _, category in s.hallucinated)),
        mentions_by_object=_ranked(Counter(category for s in scores for _, category in s.mentions)),
    )


def score_descriptions(descriptions: list[tuple[int, str]], ground_truth: dict) -> tuple[ChairMetrics, list]:
    """`descriptions`: (image_id, text) pairs; `ground_truth`: image_id -> set of categories, as
    eval.chair_objects.read_ground_truth gives it. An image without ground truth is an error."""
    missing = sorted({image_id for image_id, _ in descriptions if image_id not in ground_truth})
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} described images are not in the annotations: image_id {shown}")
    scores = [score_description(image_id, text, ground_truth[image_id]) for image_id, text in descriptions]
    return aggregate(scores), scores
