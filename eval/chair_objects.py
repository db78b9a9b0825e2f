"""CHAIR's objects: the 80 MSCOCO categories with the original's synonyms, the words of a description that
name them, and each image's ground-truth objects, as the original CHAIR builds them (Rohrbach et al., 2018,
LisaAnne/Hallucination, utils/chair.py; OPERA's chair.py, which VCD, LURE and others use, is the same but
for its lemmatizer).

A text becomes object mentions in the original's steps:

1. lower-cased and split into tokens (`tokenize`, nltk's `word_tokenize` restated without its data files);
2. every token singularized (`singularize`: inflect, the synonyms themselves left as they are; the original
   uses pattern's `singularize`, OPERA's copy nltk's WordNet lemmatizer on nltk's part-of-speech tags);
3. adjacent tokens in `DOUBLE_WORDS` joined, left to right, a token in one pair at most: "hot dog",
   "teddy bear", "fire hydrant", "cell phone" are one object each ("hot dog" is no dog), "baby elephant"
   and "adult elephant" an elephant (not a person), "passenger train" a train, "toilet seat" a toilet,
   "bow tie" a tie; "train track" and "home plate" are joined but are no object (no train, no plate);
4. when both "toilet" and "seat" remain, every "seat" is dropped ("the seat of the toilet" is no chair);
5. each remaining token that is a synonym is a mention of its category. Every mention counts: an object
   named twice is two mentions.

Ground truth of an image (`ground_truth_objects`): the categories of its instance annotations, and the
categories mentioned in its reference captions, found by the same steps.

Left out as the original leaves them out: "motor bike" and "cheesecake" (a double space in the synonym
file gives them a leading space, so they never match; "motor bike" is still joined, so its "bike" is no
bicycle either), "iPhone" (the text is lower-cased, the synonym is not), "stove top oven" (three words,
never joined; "stove" and "oven" count one each), and every word outside the list ("animal", "cub", ...).
"""

import functools
import glob
import json
import os
import re
from dataclasses import dataclass

from post_decoder.errors import InputError

SYNONYMS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chair_synonyms.txt")

# Pairs of words the original joins into one before looking them up. Some of them map to themselves and
# are no synonym ("home plate", "train track", and "motor bike" through the synonym file's spacing):
# joining them only keeps their words from counting alone.
_JOINED_PAIRS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "laptop computer", "stove top oven", "home plate", "train track",
)  # fmt: skip
# "baby X" and "adult X" are X, not a person ("baby" and "adult" are synonyms of person).
_YOUNG_AND_ADULT_ANIMALS = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub",
)  # fmt: skip
# "passenger X" is X, not a person.
_PASSENGER_VEHICLES = ("jet", "train")


def _double_words() -> dict[str, str]:
    pairs = {pair: pair for pair in _JOINED_PAIRS}
    for animal in _YOUNG_AND_ADULT_ANIMALS:
        pairs[f"baby {animal}"] = animal
        pairs[f"adult {animal}"] = animal
    for vehicle in _PASSENGER_VEHICLES:
        pairs[f"passenger {vehicle}"] = vehicle
    pairs["bow tie"] = "tie"
    pairs["toilet seat"] = "toilet"
    # The original's singularizer turns "glass" into "glas"; inflect leaves "glass", so this entry never
    # fires here and "wine glass" is joined by the pair above. Kept so the table is the original's.
    pairs["wine glas"] = "wine glass"
    return pairs


DOUBLE_WORDS = _double_words()


@dataclass(frozen=True)
class Synonyms:
    """The synonym table: `category_of` maps every synonym (as the original parses the file, some with a
    leading space) to its category, the line's first entry; `categories` are the 80 in file order."""

    categories: tuple[str, ...]
    category_of: dict[str, str]


def read_synonyms(path: str = SYNONYMS_FILE) -> Synonyms:
    """One category a line, `name, synonym, synonym, ...`; lines starting with # are comments. Split on
    ", " exactly as the original does (so its double spaces leave a leading space)."""
    categories, category_of = [], {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip() or line.startswith("#"):
                continue
            names = line.strip().split(", ")
            categories.append(names[0])
            for name in names:
                category_of[name] = names[0]
    return Synonyms(tuple(categories), category_of)


SYNONYMS = read_synonyms()
# Never singularized: the synonyms as they stand ("bus", "skis", "people", "children", "oxen") and the
# words of the joined pairs (inflect would make "tennis" "tenni" and "sports" "sport").
_KEPT_WORDS = frozenset(
    word for name in list(SYNONYMS.category_of) + list(DOUBLE_WORDS) for word in name.split(" ") if word
)

# Plurals that inflect leaves as they are (or gets wrong) and that name an object.
_IRREGULAR_PLURALS = {"grandchildren": "grandchild", "busses": "bus", "minibusses": "minibus"}


@functools.cache
def _inflect_engine():
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=200_000)
def singularize(token: str) -> str:
    """The singular of a lower-case token, or the token itself: a word of a synonym stays as it is (inflect
    would take "bus" for a plural and return "bu"), tokens that are not all letters stay as they are."""
    if token in _KEPT_WORDS or not token.isalpha():
        return token
    if token in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[token]
    return _inflect_engine().singular_noun(token) or token


# nltk's word_tokenize (Treebank rules on Punkt's sentences), restated for what CHAIR reads: words keep
# their inner hyphens, slashes, periods, colons, apostrophes and digit-group commas, and a hyphen at
# either end ("t-shirt", "hot-dog", "cat/dog", "2.5", "10:30", "o'clock", "1,000", "far-" are one token,
# as there); clitics are split off ("dog's" -> "dog" "'s", "don't" -> "do" "n't", "cannot" -> "can"
# "not"); any other character is a token of its own. Where nltk differs (a period it keeps on an initial,
# a number or an abbreviation; "…" or a control character glued to a word), its token is no object and
# ours may be one: in 6,000 descriptions by four LVLMs (OPERA's logs) no object word was in such a place.
_CLITIC = r"'(?:s|re|ve|ll|d|m)\b"
_TOKEN = re.compile(
    rf"""[^\W_]+(?=n't\b)                                     # do|n't, ca|n't
      | n't\b
      | {_CLITIC}                                             # 's 're 've 'll 'd 'm
      | (?:(?<!-)-)?[^\W_]+(?:(?:[-/.:]|,(?=\d)|'(?!(?:s|re|ve|ll|d|m)\b))[^\W_]+)*(?:-(?!-))?   # words
      | \.\.\. | --
      | \S""",
    re.VERBOSE,
)


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of `text`, punctuation included (it keeps "hot, dog" from being a hot dog)."""
    tokens = []
    for token in _TOKEN.findall(text.lower()):
        if token == "cannot":
            tokens += ["can", "not"]
        else:
            tokens.append(token)
    return tokens


def is_word(token: str) -> bool:
    return any(character.isalnum() for character in token)


@dataclass(frozen=True)
class Mention:
    word: str  # as matched: singular, a joined pair as one ("hot dog")
    category: str  # the COCO category it names
    position: int  # index of its (first) token in `tokenize(text)`


def object_mentions(text: str) -> list[Mention]:
    """The objects `text` names, in order, once per mention (the original's caption_to_words)."""
    words = [singularize(token) for token in tokenize(text)]
    joined, positions = [], []
    index = 0
    while index < len(words):
        pair = " ".join(words[index : index + 2])
        positions.append(index)
        if pair in DOUBLE_WORDS:
            joined.append(DOUBLE_WORDS[pair])
            index += 2
        else:
            joined.append(words[index])
            index += 1
    if "toilet" in joined and "seat" in joined:
        kept = [(word, position) for word, position in zip(joined, positions) if word != "seat"]
        joined, positions = [word for word, _ in kept], [position for _, position in kept]
    return [
        Mention(word, SYNONYMS.category_of[word], position)
        for word, position in zip(joined, positions)
        if word in SYNONYMS.category_of
    ]


def word_count(text: str) -> int:
    """Words in `text`: its tokens with a letter or digit (punctuation is not counted)."""
    return sum(1 for token in tokenize(text) if is_word(token))


# Ground truth ------------------------------------------------------------------------------------------


def ground_truth_objects(instance_files: list[dict], caption_files: list[dict], image_ids=None) -> dict:
    """image_id -> set of categories, from loaded COCO instance files (`categories`, `annotations` with
    `image_id` and `category_id`) and caption files (`annotations` with `image_id` and `caption`), as the
    original combines them. `image_ids`: only these images (all when None). Every image of the files'
    `images` lists is present, with an empty set when nothing names an object in it."""
    wanted = None if image_ids is None else set(image_ids)
    objects = {}
    for coco in instance_files + caption_files:
        for image in coco.get("images", []):
            if wanted is None or image["id"] in wanted:
                objects.setdefault(image["id"], set())
    for coco in instance_files:
        names = {category["id"]: category["name"] for category in coco["categories"]}
        for annotation in coco["annotations"]:
            if wanted is None or annotation["image_id"] in wanted:
                category = SYNONYMS.category_of[names[annotation["category_id"]]]
                objects.setdefault(annotation["image_id"], set()).add(category)
    for coco in caption_files:
        for annotation in coco["annotations"]:
            if wanted is None or annotation["image_id"] in wanted:
                found = {mention.category for mention in object_mentions(annotation["caption"])}
                objects.setdefault(annotation["image_id"], set()).update(found)
    return objects


def _coco_kind(coco, path: str) -> str:
    """The file's kind, "instances" or "captions", from what it holds; InputError when it is neither."""
    if not isinstance(coco, dict) or not isinstance(coco.get("annotations"), list):
        raise InputError(f"{path}: not a COCO annotation file (a JSON object with an 'annotations' list)")
    if not isinstance(coco.get("images", []), list):
        raise InputError(f"{path}: 'images' is not a list")
    for image in coco.get("images", []):
        if not isinstance(image, dict) or not _is_id(image.get("id")):
            raise InputError(f"{path}: an entry of 'images' has no integer 'id': {str(image)[:80]}")
    sample = coco["annotations"][0] if coco["annotations"] else {}
    if "categories" in coco or "category_id" in sample:
        kind, fields = "instances", ("image_id", "category_id")
        if not isinstance(coco.get("categories"), list):
            raise InputError(f"{path}: an instances file without a 'categories' list")
        names = {}
        for category in coco["categories"]:
            if not isinstance(category, dict) or not _is_id(category.get("id")) or "name" not in category:
                raise InputError(f"{path}: a category without an integer 'id' and a 'name': {str(category)[:80]}")
            if category["name"] not in SYNONYMS.category_of:  # a synonym names its category, as in the original
                raise InputError(
                    f"{path}: category {category['name']!r} (id {category['id']}) is neither one of the 80 COCO"
                    " categories nor a synonym of one (eval/chair_synonyms.txt)"
                )
            names[category["id"]] = category["name"]
    elif "caption" in sample or not coco["annotations"]:
        kind, fields = "captions", ("image_id", "caption")
    else:
        raise InputError(f"{path}: neither instances (category_id) nor captions (caption) annotations")
    for number, annotation in enumerate(coco["annotations"]):
        if not isinstance(annotation, dict) or any(field not in annotation for field in fields):
            raise InputError(f"{path}: annotation {number} has no {' or '.join(fields)}: {str(annotation)[:80]}")
        if not _is_id(annotation["image_id"]):
            raise InputError(f"{path}: annotation {number} has image_id {annotation['image_id']!r}, not an integer")
        if kind == "instances" and annotation["category_id"] not in names:
            raise InputError(f"{path}: annotation {number} has category_id {annotation['category_id']!r},"
                             " which is not in 'categories'")  # fmt: skip
        if kind == "captions" and not isinstance(annotation["caption"], str):
            raise InputError(f"{path}: annotation {number}'s caption is not a string")
    return kind


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def annotation_files(paths: list[str]) -> list[str]:
    """The JSON files named by `paths`: a file as it is, a folder's instances_*.json and captions_*.json."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "instances_*.json")))
            found += sorted(glob.glob(os.path.join(path, "captions_*.json")))
            if not found:
                raise InputError(f"--annotations: {path}: no instances_*.json or captions_*.json in this folder")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InputError(f"--annotations: {path}: no such file or folder")
    return files


def read_ground_truth(paths: list[str], image_ids=None) -> tuple[dict, list[str]]:
    """(image_id -> set of categories, the files read) from COCO instance and caption files or folders
    holding them (each file's kind is told from its content). At least one of each kind is needed, as
    the original needs both (for COCO 2014: instances_val2014.json and captions_val2014.json; the
    original also reads the train2014 files, which hold none of the val2014 images)."""
    files = annotation_files(paths)
    instance_files, caption_files = [], []
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                coco = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: not JSON ({error})") from None
        kind = _coco_kind(coco, path)
        (instance_files if kind == "instances" else caption_files).append(coco)
    if not instance_files or not caption_files:
        missing = "instance" if not instance_files else "caption"
        raise InputError(
            f"--annotations: no COCO {missing} annotations among {', '.join(files)}: CHAIR's ground truth needs"
            " both instances (e.g. instances_val2014.json) and captions (captions_val2014.json)"
        )
    return ground_truth_objects(instance_files, caption_files, image_ids), files
