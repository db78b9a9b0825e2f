"""HA-DPO's published preference data (the LLaVA-1.5 files) read into preference samples.

- `desc_data.json`: `{"<vg_id>": {"chosen": [str, ...], "rejected": [str, ...]}}`, detailed
  descriptions of Visual Genome images; the question is one of HA-DPO's four description prompts.
- `pope_data.json`: `[{"image_id", "question", "answer", "chosen", "reject", "correct"}, ...]`,
  yes/no questions on Visual Genome images (`image_id` is a VG id); an entry with
  `correct == true` is not a pair and is left out, as HA-DPO does, unless `pope_correct_pairs`:
  then it is a pair too (its `chosen` is the truth), so the pairs also prefer "Yes" where the
  truth does, not only the "No" of a model that errs by affirming absent objects.
- Images: `vg_path/image_data.json` gives each VG id a url whose last two parts (`VG_100K` or
  `VG_100K_2`, file name) locate the file under `vg_path`.

HA-DPO's mix (`sample_strategy="offline"`): for each described image, one chosen and one rejected
description drawn at random; then the pope pairs followed by the description pairs twice.
`sample_strategy="all"` uses every chosen x rejected pair. The draws come from
`random.Random(seed)` in HA-DPO's order, so well-formed data gives HA-DPO's pairs and prompts
for the same seed (42, HA-DPO's default).
"""

import os
import random

from post_decoder.errors import InputError

from .json_files import read_json
from .preference_data import PreferenceSample
from .skips import SkipCounter

HADPO_DESCRIPTION_PROMPTS = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)
SAMPLE_STRATEGIES = ("offline", "all")
VG_FOLDERS = ("VG_100K", "VG_100K_2")
POPE_KEYS = ("image_id", "question", "chosen", "reject", "correct")


class VisualGenomeImages:
    """VG image id -> file path, through `image_data.json` (VG 1.2 names the id `image_id`, 1.0 `id`)."""

    def __init__(self, vg_path: str):
        self.vg_path = vg_path
        index_path = os.path.join(vg_path, "image_data.json")
        entries = read_json(index_path, "Visual Genome image_data.json")
        if not isinstance(entries, list):
            raise InputError(f"{index_path}: expected a list of images, found {type(entries).__name__}")
        self.relative_paths: dict[int, tuple[str, str]] = {}
        for number, entry in enumerate(entries):
            raw_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
            image_id = image_id_of(raw_id)
            url = entry.get("url") if isinstance(entry, dict) else None
            parts = url.rstrip("/").split("/") if isinstance(url, str) else []
            if image_id is None or len(parts) < 2:
                raise InputError(
                    f"{index_path}: entry {number} has no usable image id and url "
                    f"(image_id {raw_id!r}, url {url!r}); is this Visual Genome's image_data.json?"
                )
            if image_id in self.relative_paths:
                raise InputError(
                    f"{index_path}: image id {image_id} is listed twice (again at entry {number}); "
                    "keep one entry per image"
                )
            self.relative_paths[image_id] = (parts[-2], parts[-1])

    def path(self, image_id: int) -> str | None:
        """The file's path: the url's folder, else the other VG folder where the file is there; None for an
        unknown id."""
        if image_id not in self.relative_paths:
            return None
        folder, name = self.relative_paths[image_id]
        candidates = [os.path.join(self.vg_path, folder, name)] + [
            os.path.join(self.vg_path, other, name) for other in VG_FOLDERS
        ]
        return next((candidate for candidate in candidates if os.path.isfile(candidate)), candidates[0])


def image_id_of(value) -> int | None:
    """A Visual Genome id: a JSON integer or a string of digits ("6001" keys desc_data.json); None for
    anything else, so that 6001.7 or "6001.7" is never read as image 6001."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    return None


def _image_path(
    raw_id, images: VisualGenomeImages, sample_id: str, source: str, skips: SkipCounter, id_in_detail: bool
) -> str | None:
    """The image file of a sample's id, or None (counted) when the id is malformed or unknown."""
    image_id = image_id_of(raw_id)
    if image_id is None:
        skips.skip(sample_id, "image id not a whole number", repr(raw_id), source)
        return None
    image = images.path(image_id)
    if image is None:
        skips.skip(sample_id, "image id not in image_data.json", str(raw_id) if id_in_detail else "", source)
    return image


def _usable_answers(answers: list, sample_id: str, which: str, source: str, skips: SkipCounter) -> list[str]:
    """The non-empty strings of a chosen/rejected list; each other one is counted."""
    usable = []
    for number, answer in enumerate(answers):
        if not isinstance(answer, str):
            skips.skip(f"{sample_id} {which}[{number}]", "not a string", type(answer).__name__, source)
        elif not answer.strip():
            skips.skip(f"{sample_id} {which}[{number}]", "empty answer", source=source)
        else:
            usable.append(answer)
    return usable


def read_description_pairs(
    desc_data_path: str, images: VisualGenomeImages, sample_strategy: str, rng: random.Random, skips: SkipCounter
) -> list[PreferenceSample]:
    data = read_json(desc_data_path, "HA-DPO desc_data.json")
    if not isinstance(data, dict):
        raise InputError(
            f"{desc_data_path}: expected an object keyed by Visual Genome image id, found {type(data).__name__}"
            " (is this HA-DPO's desc_data.json?)"
        )
    samples = []
    for key, entry in data.items():
        sample_id = f"desc:{key}"
        if not isinstance(entry, dict):
            skips.skip(sample_id, "not an object", f"a {type(entry).__name__}", desc_data_path)
            continue
        missing = [name for name in ("chosen", "rejected") if name not in entry]
        if missing:
            skips.skip(sample_id, f"missing key '{missing[0]}'", source=desc_data_path)
            continue
        if not isinstance(entry["chosen"], list) or not isinstance(entry["rejected"], list):
            skips.skip(sample_id, "malformed entry", "chosen and rejected must be lists of strings", desc_data_path)
            continue
        chosen = _usable_answers(entry["chosen"], sample_id, "chosen", desc_data_path, skips)
        rejected = _usable_answers(entry["rejected"], sample_id, "rejected", desc_data_path, skips)
        if not chosen or not rejected:
            skips.skip(
                sample_id, "empty answer", f"no {'chosen' if not chosen else 'rejected'} description", desc_data_path
            )
            continue
        if sample_strategy == "offline":
            chosen, rejected = [rng.choice(chosen)], [rng.choice(rejected)]
        pairs = [(c, r, rng.choice(HADPO_DESCRIPTION_PROMPTS)) for c in chosen for r in rejected]
        image = _image_path(key, images, sample_id, desc_data_path, skips, id_in_detail=False)  # after the draws
        if image is None:
            continue
        for number, (good, bad, prompt) in enumerate(pairs):
            pair_id = sample_id if sample_strategy == "offline" else f"{sample_id}#{number}"
            samples.append(PreferenceSample(pair_id, image, prompt, good, bad, desc_data_path))
    return samples


def _text_problem(entry: dict) -> tuple[str, str] | None:
    """(reason, detail) when a pope entry's question, chosen or reject is not a non-empty string."""
    for key in ("question", "chosen", "reject"):
        if not isinstance(entry[key], str):
            return "not a string", f"'{key}' is {type(entry[key]).__name__}"
        if not entry[key].strip():
            return ("empty question" if key == "question" else "empty answer"), ""
    return None


def read_pope_pairs(
    pope_data_path: str, images: VisualGenomeImages, skips: SkipCounter, correct_pairs: bool = False
) -> list[PreferenceSample]:
    data = read_json(pope_data_path, "HA-DPO pope_data.json")
    if not isinstance(data, list):
        raise InputError(
            f"{pope_data_path}: expected a list of questions, found {type(data).__name__}"
            " (is this HA-DPO's pope_data.json?)"
        )
    samples = []
    for number, entry in enumerate(data):
        sample_id = f"pope:{number}"
        if not isinstance(entry, dict):
            skips.skip(sample_id, "not an object", f"a {type(entry).__name__}", pope_data_path)
            continue
        missing = [key for key in POPE_KEYS if key not in entry]
        if missing:
            skips.skip(sample_id, f"missing key '{missing[0]}'", source=pope_data_path)
            continue
        if not isinstance(entry["correct"], bool):
            skips.skip(
                sample_id, "malformed entry", f"'correct' is {entry['correct']!r}, not true/false", pope_data_path
            )
            continue
        if entry["correct"] and not correct_pairs:
            skips.note("pope entries answered correctly (correct == true, not pairs; as HA-DPO)")
            continue
        problem = _text_problem(entry)
        if problem:
            skips.skip(sample_id, problem[0], problem[1], pope_data_path)
            continue
        image = _image_path(entry["image_id"], images, sample_id, pope_data_path, skips, id_in_detail=True)
        if image is None:
            continue
        samples.append(
            PreferenceSample(sample_id, image, entry["question"], entry["chosen"], entry["reject"], pope_data_path)
        )
    return samples


def read_hadpo_pairs(
    vg_path: str,
    desc_data_path: str | None = None,
    pope_data_path: str | None = None,
    sample_strategy: str = "offline",
    seed: int = 42,
    desc_repeat: int = 2,
    skips: SkipCounter | None = None,
    pope_correct_pairs: bool = False,
) -> list[PreferenceSample]:
    """HA-DPO's training list: pope pairs, then the description pairs `desc_repeat` times."""
    if sample_strategy not in SAMPLE_STRATEGIES:
        raise InputError(f"unknown sample_strategy {sample_strategy!r}; choose one of {', '.join(SAMPLE_STRATEGIES)}")
    if desc_data_path is None and pope_data_path is None:
        raise InputError("give desc_data_path, pope_data_path or both")
    skips = skips if skips is not None else SkipCounter("HA-DPO pairs")
    images = VisualGenomeImages(vg_path)
    rng = random.Random(seed)
    described = read_description_pairs(desc_data_path, images, sample_strategy, rng, skips) if desc_data_path else []
    pope = read_pope_pairs(pope_data_path, images, skips, pope_correct_pairs) if pope_data_path else []
    skips.note("pope pairs", len(pope))
    skips.note(f"description pairs (each used {desc_repeat}x)", len(described))
    return pope + described * desc_repeat
