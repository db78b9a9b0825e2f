import random

import numpy as np
import pytest
import torch

from ha_dpo.hadpo_data import read_hadpo_pairs
from ha_dpo.preference_data import PreferenceDataset, PreferenceSample
from ha_dpo.skips import SkipCounter
from post_decoder.conversation import CONV_MODES, add_llava_tokens, question_prompt, tokenize_with_image
from post_decoder.errors import InputError
from tests.conftest import shared_file
from tests.data_files import write_hadpo, write_json, write_visual_genome

# HA-DPO's four description prompts, written out here independently of the module under test
PROMPTS = [
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
]
IMAGE_SEQ_LENGTH = 16  # the tiny model's: (32 / 8) ** 2


@pytest.fixture
def hadpo(tmp_path):
    return write_hadpo(tmp_path / "hadpo")


def ids_of(samples):
    return [sample.sample_id for sample in samples]


def test_default_mix_is_pope_pairs_then_one_description_pair_per_image_twice(hadpo):
    vg_path, desc, pope = hadpo
    skips = SkipCounter("HA-DPO pairs")
    samples = read_hadpo_pairs(vg_path, desc, pope, skips=skips)
    described = ["desc:1", "desc:2", "desc:3", "desc:5", "desc:6", "desc:7"]
    assert ids_of(samples) == ["pope:0", "pope:2", "pope:5", "pope:6"] + described + described
    assert samples[4:10] == samples[10:]  # the same pairs, with the same prompts
    for sample in samples[4:10]:
        assert sample.question in PROMPTS
    assert samples[4].chosen in ("A red circle.", "A red circle on grass.")
    assert samples[4].rejected in ("A dog.", "A cat.", "Two cups.")
    assert samples[6].chosen == "A see-through circle."  # the empty chosen description is never drawn
    pope_two = samples[3]
    assert (pope_two.question, pope_two.chosen, pope_two.rejected) == (
        "Is there a dog in the image?",
        "No, there is no dog.",
        "Yes, there is a dog.",
    )


def test_pope_entries_answered_correctly_are_left_out_and_noted(hadpo):
    vg_path, _, pope = hadpo
    skips = SkipCounter("pairs")
    samples = read_hadpo_pairs(vg_path, pope_data_path=pope, skips=skips)
    assert "pope:1" not in ids_of(samples)
    assert skips.notes["pope entries answered correctly (correct == true, not pairs; as HA-DPO)"] == 1
    assert "pope:1" not in str(skips.first_ids)  # not a skip: a deliberate rule
    with_correct = read_hadpo_pairs(vg_path, pope_data_path=pope, pope_correct_pairs=True)
    assert ids_of(with_correct) == sorted(ids_of(samples) + ["pope:1"], key=lambda sample_id: int(sample_id.split(":")[1]))


def test_all_pairs_option_uses_every_chosen_rejected_pair(hadpo):
    vg_path, desc, pope = hadpo
    samples = read_hadpo_pairs(vg_path, desc, pope, sample_strategy="all")
    described = [s for s in samples if s.sample_id.startswith("desc:1#")]
    assert len(described) == 2 * 2 * 3  # 2 chosen x 3 rejected, twice
    assert {(s.chosen, s.rejected) for s in described} == {
        (c, r) for c in ("A red circle.", "A red circle on grass.") for r in ("A dog.", "A cat.", "Two cups.")
    }
    assert len(samples) == 4 + 2 * (6 + 2 + 1 + 1 + 1 + 1)
    once = read_hadpo_pairs(vg_path, desc, pope, sample_strategy="all", desc_repeat=1)
    assert len(once) == 4 + 12


def test_bad_entries_are_counted_with_their_ids(hadpo):
    vg_path, desc, pope = hadpo
    skips = SkipCounter("HA-DPO pairs")
    read_hadpo_pairs(vg_path, desc, pope, skips=skips)
    assert skips.counts == {
        "empty answer": 2,
        "missing key 'rejected'": 1,
        "image id not in image_data.json": 1,
        "missing key 'reject'": 1,
    }
    assert skips.first_ids["empty answer"] == ["desc:3 chosen[0]", "pope:4"]
    assert skips.first_ids["missing key 'rejected'"] == ["desc:4"]
    assert skips.first_ids["image id not in image_data.json"] == ["desc:999"]
    summary = skips.summary()
    assert "HA-DPO pairs: 5 sample(s) skipped" in summary and "missing key 'reject': 1 (e.g. pope:3)" in summary


def test_strict_stops_at_the_first_bad_entry_naming_file_and_id(hadpo):
    vg_path, desc, pope = hadpo
    with pytest.raises(ValueError, match=r"desc_data\.json: sample desc:3 chosen\[0\]: empty answer"):
        read_hadpo_pairs(vg_path, desc, pope, skips=SkipCounter("pairs", strict=True))


def clean_descriptions(count):
    return {
        str(i): {"chosen": [f"good {i} {k}" for k in range(3)], "rejected": [f"bad {i} {k}" for k in range(3)]}
        for i in range(1, count + 1)
    }


def test_prompt_and_pair_draws_are_seeded_and_follow_hadpo(tmp_path):
    images = {i: ("VG_100K", "VG_100K", "RGB", (8, 8)) for i in range(1, 31)}
    vg_path = write_visual_genome(tmp_path / "VG", images)
    data = clean_descriptions(30)
    desc = write_json(tmp_path / "desc.json", data)
    first = read_hadpo_pairs(vg_path, desc, seed=42, desc_repeat=1)
    assert first == read_hadpo_pairs(vg_path, desc, seed=42, desc_repeat=1)
    other = read_hadpo_pairs(vg_path, desc, seed=7, desc_repeat=1)
    assert [s.question for s in first] != [s.question for s in other]
    assert len({s.question for s in first}) == 4
    # HA-DPO seeds Python's random and, per image in file order, draws a chosen, a rejected, then a prompt.
    draws = random.Random(42)
    expected = []
    for key, entry in data.items():
        chosen, rejected = draws.choice(entry["chosen"]), draws.choice(entry["rejected"])
        expected.append((f"desc:{key}", chosen, rejected, draws.choice(PROMPTS)))
    assert [(s.sample_id, s.chosen, s.rejected, s.question) for s in first] == expected
    assert all(s.image == f"{vg_path}/VG_100K/{s.sample_id[5:]}.jpg" for s in first)


def test_an_image_found_in_the_other_vg_folder(hadpo):
    vg_path, desc, _ = hadpo
    samples = read_hadpo_pairs(vg_path, desc)
    assert next(s.image for s in samples if s.sample_id == "desc:7").endswith("VG_100K_2/7.jpg")
    assert next(s.image for s in samples if s.sample_id == "desc:5").endswith("VG_100K/5.jpg")  # absent: the url's


def test_unusable_files_are_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_data.json"):
        read_hadpo_pairs(str(tmp_path), desc_data_path=str(tmp_path / "desc.json"))
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    (tmp_path / "desc.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"desc\.json: not valid JSON"):
        read_hadpo_pairs(vg_path, desc_data_path=str(tmp_path / "desc.json"))
    with pytest.raises(ValueError, match="sample_strategy"):
        read_hadpo_pairs(vg_path, desc_data_path=str(tmp_path / "desc.json"), sample_strategy="online")


# --- the tokenized dataset ---------------------------------------------------------------------


def build(samples, tokenizer, model_max_length=512, strict=False, skips=None, **options):
    skips = skips if skips is not None else SkipCounter("pairs", strict=strict)
    dataset = PreferenceDataset(
        samples,
        tokenizer,
        tokenizer.convert_tokens_to_ids("<image>"),
        IMAGE_SEQ_LENGTH,
        model_max_length,
        skips,
        **options,
    )
    return dataset, skips


def build_nothing(samples, tokenizer, model_max_length=512):
    """The skips of a dataset left with no pair, which must refuse to be built, saying why."""
    skips = SkipCounter("pairs")
    with pytest.raises(InputError, match=r"^no preference pairs left to train on in .*: \d+ skipped \(") as error:
        build(samples, tokenizer, model_max_length, skips=skips)
    return skips, str(error.value)


def test_dataset_skips_missing_and_corrupt_images_and_opens_every_mode_as_rgb(hadpo, llava_tokenizer):
    samples = read_hadpo_pairs(*hadpo)
    dataset, skips = build(samples, llava_tokenizer)
    assert skips.counts == {"missing image": 3, "unreadable image": 2}
    assert skips.first_ids["missing image"][0] == f"pope:5 ({hadpo[0]}/VG_100K/5.jpg)"
    assert [item["sample_id"] for item in dataset] == ["pope:0", "pope:2", "pope:6"] + [
        "desc:1",
        "desc:2",
        "desc:3",
        "desc:7",
    ] * 2
    sizes = {item["sample_id"]: item["image"].size for item in dataset}
    assert sizes["desc:1"] == (37, 91) and sizes["desc:2"] == (64, 48) and sizes["desc:3"] == (50, 50)
    assert all(item["image"].mode == "RGB" for item in dataset)
    with pytest.raises(ValueError, match=r"sample desc:5 .*missing image"):
        build(samples[:2] + [s for s in samples if s.sample_id == "desc:5"], llava_tokenizer, strict=True)


def test_an_image_that_goes_bad_later_names_the_sample_and_file(tmp_path, llava_tokenizer):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    image = f"{vg_path}/VG_100K/1.jpg"
    dataset, _ = build([PreferenceSample("pair-1", image, "Is it red?", "Yes.", "No.")], llava_tokenizer)
    (tmp_path / "VG" / "VG_100K" / "1.jpg").unlink()
    with pytest.raises(ValueError, match=r"sample pair-1: image not found: .*1\.jpg"):
        dataset[0]


def test_prompt_and_answer_ids(tmp_path, llava_tokenizer):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    sample = PreferenceSample(
        "pair-1", f"{vg_path}/VG_100K/1.jpg", "Is there a dog in the image?", "Yes, there is a dog.", "No."
    )
    item = build([sample], llava_tokenizer)[0][0]
    image_token_id = llava_tokenizer.convert_tokens_to_ids("<image>")
    prompt = tokenize_with_image(question_prompt(sample.question), llava_tokenizer, image_token_id, IMAGE_SEQ_LENGTH)
    assert item["prompt_input_ids"].tolist() == prompt
    assert llava_tokenizer.decode(prompt[-4:]).endswith("ASSISTANT:")
    for answer, ids in ((sample.chosen, item["chosen_input_ids"]), (sample.rejected, item["rejected_input_ids"])):
        assert ids.dtype == torch.long
        assert ids.tolist() == llava_tokenizer(answer, add_special_tokens=False).input_ids + [
            llava_tokenizer.eos_token_id
        ]


def test_answers_are_cut_at_model_max_length_and_a_pair_without_room_is_skipped(tmp_path, llava_tokenizer):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    image = f"{vg_path}/VG_100K/1.jpg"
    long_pair = PreferenceSample(
        "long", image, "Is it red?", "Yes, there is a red circle next to a blue square.", "No."
    )
    full = build([long_pair], llava_tokenizer)[0][0]
    prompt_length = len(full["prompt_input_ids"])
    room = len(full["rejected_input_ids"])  # "No." and </s> just fit
    assert len(full["chosen_input_ids"]) > room
    dataset, skips = build([long_pair], llava_tokenizer, model_max_length=prompt_length + room)
    assert dataset[0]["chosen_input_ids"].tolist() == full["chosen_input_ids"][:room].tolist()
    assert dataset[0]["rejected_input_ids"].tolist() == full["rejected_input_ids"].tolist()
    assert skips.notes["pairs with an answer cut at model_max_length"] == 1
    skips, _ = build_nothing([long_pair], llava_tokenizer, model_max_length=prompt_length)
    assert skips.counts == {"no room for the answer within model_max_length": 1}
    assert skips.first_ids["no room for the answer within model_max_length"] == [
        f"long (prompt has {prompt_length} tokens, model_max_length is {prompt_length})"
    ]
    with pytest.raises(ValueError, match="sample long .*no room for the answer"):
        build([long_pair], llava_tokenizer, model_max_length=prompt_length, strict=True)


def test_an_empty_answer_in_a_sample_is_skipped(tmp_path, llava_tokenizer):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    skips, _ = build_nothing(
        [PreferenceSample("blank", f"{vg_path}/VG_100K/1.jpg", "Is it red?", "Yes.", "  ")], llava_tokenizer
    )
    assert skips.first_ids == {"empty answer": ["blank (rejected)"]}


def sentencepiece_reference(text, processor, image_token_id):
    """LLaVA-1.5's ids for a conversation, restated over raw SentencePiece: split on <image>, each
    piece encoded on its own (BOS first only) with `</s>` as the EOS id between encoded chunks."""
    ids = [1]
    for number, piece in enumerate(text.split("<image>")):
        if number:
            ids.append(image_token_id)
        for index, chunk in enumerate(piece.split("</s>")):
            if index:
                ids.append(2)
            ids.extend(processor.encode(chunk) if chunk else [])
    return ids


@pytest.fixture(scope="module")
def llama2():
    """The real Llama-2 tokenizer (with LLaVA's added tokens) and its raw SentencePiece model."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = shared_file("tokenizers", "llama2")
    return add_llava_tokens(AutoTokenizer.from_pretrained(folder)), spm.SentencePieceProcessor(
        model_file=f"{folder}/tokenizer.model"
    )


@pytest.mark.parametrize(
    "answer, separate_tokenization_agrees",
    [
        ("Yes, there is a dog in the image.", True),
        ("No.", True),
        ("The image shows a man ironing clothes on the back of a yellow taxi; 2 cars behind.", True),
        ("\nA line break first.", True),
        ("  Two spaces first.", False),  # the space after "ASSISTANT:" joins them: only the whole string is right
    ],
)
def test_answer_ids_are_llava_1_5s_with_the_real_tokenizer(tmp_path, llama2, answer, separate_tokenization_agrees):
    tokenizer, processor = llama2
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    question = "Is there a dog in the image?"
    sample = PreferenceSample("real", f"{vg_path}/VG_100K/1.jpg", question, answer, "I cannot tell.")  # never the same
    dataset = PreferenceDataset([sample], tokenizer, 32000, 1, 2048, SkipCounter("pairs"))
    item = dataset[0]
    conversation = question_prompt(question) + " " + answer + "</s>"
    whole = item["prompt_input_ids"].tolist() + item["chosen_input_ids"].tolist()
    assert whole == sentencepiece_reference(conversation, processor, 32000)
    separate = tokenizer(answer, add_special_tokens=False).input_ids + [2]
    assert (item["chosen_input_ids"].tolist() == separate) == separate_tokenization_agrees
    assert np.all(item["chosen_input_ids"].numpy() < 32000)
