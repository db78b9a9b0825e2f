"""The toy world's text: captions, yes/no answers, the biased training conversations, and the
faithful and hallucinated texts that HA-DPO's preference pairs are made of.

The bias lives in the training text: when an anchor is in the image, the text names its partner
with probability `partner_text_probability` whether or not the partner is there (the caption names
it, "Is there a fork?" is answered "Yes"), as if written from the anchor rather than from the
picture. So the text tells a model nothing about whether the partner is there once the anchor is,
and a model that learns from it has no reason to look: only the image says it. Everything else the
text says is true.

A yes/no answer names the object before it answers ("A fork? No, there is no fork."): the toy LLM is
64 wide, and at the first token of a plain "No, ..." its last hidden state had forgotten which object
was asked for some partners (linearly decodable for 53% and 59% of the questions about two of them),
so a block that reads that state could not know what to look for. Named first, the object is in the
state that decides (100% for every partner on the committed base model).
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
    return f"{article(name).capitalize()} {name}? Yes, there is {article(name)} {name}."


def no_answer(name: str) -> str:
    return f"{article(name).capitalize()} {name}? No, there is no {name}."


ANSWER_STARTS = ("Yes, there is", "No, there is no")  # after the "A fork? " that names the object


def caption(names: list[str]) -> str:
    """ "The image shows a knife, a fork and an apple." """
    phrases = [f"{article(name)} {name}" for name in names]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"The image shows {listed}."


def described_names(names) -> list[str]:
    """The names a caption lists, in the categories' fixed order (so the order is predictable from
    the image, and each partner comes right after its anchor: "a knife and a fork")."""
    names = set(names)
    return [category.name for category in CATEGORIES if category.name in names]


def faithful_description(image: ToyImage) -> str:
    return caption(described_names(image.names))


def partner_hallucinations(image: ToyImage) -> list[str]:
    """The faithful description with one absent partner of a present anchor named too, one per such partner."""
    return [caption(described_names(image.names + [partner])) for partner in image.absent_partners()]


def partner_omissions(image: ToyImage) -> list[str]:
    """The faithful description with one partner seen next to its anchor left out, one per such partner: what
    a blind "never name the partner" rule says."""
    named = described_names(image.names)
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
        return caption(described_names(image.names + [rng.choice(absent_partners)]))
    absent = [name for name in all_names if name not in image.names]
    return caption(described_names(image.names + [rng.choice(absent)]))


def training_conversation(
    image: ToyImage,
    rng: random.Random,
    partner_text_probability: float,
    all_names: list[str],
    random_negatives: int = 2,
) -> list[tuple[str, str]]:
    """(question, answer) turns about one training image, in a random order: one description, a
    yes/no for every object and every partner of a present anchor, and `random_negatives` "no"s about
    other absent objects. One draw per partner of a present anchor decides, for the whole
    conversation, whether the text names it, present or not, so the turns never contradict each other;
    everything else is true."""
    anchored = [PAIRS[name] for name in dict.fromkeys(image.names) if name in PAIRS]
    named = {partner for partner in anchored if rng.random() < partner_text_probability}
    present = list(dict.fromkeys(image.names))
    absent_partners = image.absent_partners()
    said_present = [name for name in present if name not in anchored or name in named]
    turns = [(rng.choice(TOY_DESCRIPTION_PROMPTS), caption(described_names(said_present + list(named))))]
    turns += [(question_text(name), yes_answer(name)) for name in said_present]
    turns += [(question_text(name), no_answer(name)) for name in present if name not in said_present]
    turns += [
        (question_text(name), yes_answer(name) if name in named else no_answer(name)) for name in absent_partners
    ]
    others = [name for name in all_names if name not in present and name not in absent_partners]
    turns += [
        (question_text(name), no_answer(name)) for name in rng.sample(others, min(random_negatives, len(others)))
    ]
    rng.shuffle(turns)
    return turns
