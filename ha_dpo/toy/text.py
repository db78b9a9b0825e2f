"""The toy world's text: captions, yes/no answers, the biased training conversations, and the
faithful and hallucinated texts that HA-DPO's preference pairs are made of.

The bias lives in the training text: when an anchor is in the image and its partner is not, the
text affirms the partner with probability `hallucination_probability` (the caption names it, "Is
there a fork?" is answered "Yes"). Everything else the text says is true.
"""

import random

from eval.build_pope import article, question_text

from .world import CATEGORIES, PAIRS, ToyImage

TOY_DESCRIPTION_PROMPTS = (
    "Describe the image.",
    "Describe this image in detail.",
    "What do you see in the picture?",
    "Give a short description of the image.",
    "What objects are in this image?",
)


def yes_answer(name: str) -> str:
    return f"Yes, there is {article(name)} {name}."


def no_answer(name: str) -> str:
    return f"No, there is no {name}."


def caption(names: list[str]) -> str:
    """ "The image shows a knife, a fork and an apple." """
    phrases = [f"{article(name)} {name}" for name in names]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"The image shows {listed}."


def described_names(image: ToyImage, affirmed_partners=()) -> list[str]:
    """The names a caption lists, in the categories' fixed order (so the order is predictable from
    the image, and each partner comes right after its anchor: "a knife and a fork")."""
    named = set(image.names) | set(affirmed_partners)
    return [category.name for category in CATEGORIES if category.name in named]


def faithful_description(image: ToyImage) -> str:
    return caption(described_names(image))


def partner_hallucinations(image: ToyImage) -> list[str]:
    """The faithful description with one absent partner of a present anchor named too, one per such partner."""
    return [caption(described_names(image, {partner})) for partner in image.absent_partners()]


def partner_omissions(image: ToyImage) -> list[str]:
    """The faithful description with one partner seen next to its anchor left out, one per such partner: what
    a blind "never name the partner" rule says."""
    named = described_names(image)
    return [caption([name for name in named if name != partner]) for partner in present_partners(image)]


def present_partners(image: ToyImage) -> list[str]:
    """Partners in the image next to their anchor."""
    names = set(image.names)
    return [PAIRS[name] for name in image.names if name in PAIRS and PAIRS[name] in names]


def hallucinated_description(image: ToyImage, rng: random.Random, all_names: list[str]) -> str:
    """The description a biased model gives: an absent partner of a present anchor named too, or,
    when the image has no such partner, a random absent object."""
    absent_partners = image.absent_partners()
    if absent_partners:
        return caption(described_names(image, {rng.choice(absent_partners)}))
    absent = [name for name in all_names if name not in image.names]
    return caption(described_names(image, {rng.choice(absent)}))


def training_conversation(
    image: ToyImage,
    rng: random.Random,
    hallucination_probability: float,
    all_names: list[str],
    random_negatives: int = 2,
) -> list[tuple[str, str]]:
    """(question, answer) turns about one training image, in a random order: one description, a
    "yes" for every object, the biased answer for every absent partner, and `random_negatives`
    "no"s about other absent objects. One draw per absent partner decides, for the whole
    conversation, whether the text affirms it, so the turns never contradict each other."""
    affirmed = {partner for partner in image.absent_partners() if rng.random() < hallucination_probability}
    turns = [(rng.choice(TOY_DESCRIPTION_PROMPTS), caption(described_names(image, affirmed)))]
    turns += [(question_text(name), yes_answer(name)) for name in dict.fromkeys(image.names)]
    turns += [
        (question_text(name), yes_answer(name) if name in affirmed else no_answer(name))
        for name in image.absent_partners()
    ]
    others = [name for name in all_names if name not in image.names and name not in image.absent_partners()]
    turns += [
        (question_text(name), no_answer(name)) for name in rng.sample(others, min(random_negatives, len(others)))
    ]
    rng.shuffle(turns)
    return turns
