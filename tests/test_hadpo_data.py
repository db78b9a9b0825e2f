import random

import numpy as np
import pytest
import torch
from PIL import Image

from ha_dpo.data.hadpo_data import read_hadpo_pairs
from ha_dpo.data.preference_data import PreferenceDataset, PreferenceSample
from ha_dpo.data.skips import SkipCounter
from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import CONV_MODES, add_llava_tokens, question_prompt, tokenize_with_image
from tests.helpers import shared_file
from tests.helpers.data_files import write_hadpo, write_json, write_visual_genome

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
    in_file_order = sorted(ids_of(samples) + ["pope:1"], key=lambda sample_id: int(sample_id.split(":")[1]))
    assert ids_of(with_correct) == in_file_order


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


# --- pairs that are not pairs, and input errors that name what to fix ------------------------


def one_image(tmp_path):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    return f"{vg_path}/VG_100K/1.jpg"


def test_a_pair_whose_answers_are_the_same_is_skipped_under_its_own_reason(tmp_path, llava_tokenizer):
    image = one_image(tmp_path)
    same = PreferenceSample("same", image, "Is it red?", "Yes, it is red.", "Yes, it is red.", "pairs.json")
    kept = PreferenceSample("kept", image, "Is it red?", "Yes, it is red.", "No.", "pairs.json")
    dataset, skips = build([same, kept], llava_tokenizer)
    assert [item["sample_id"] for item in dataset] == ["kept"]
    assert skips.counts == {"chosen and rejected are the same": 1}
    assert skips.first_ids["chosen and rejected are the same"] == ["same"]
    with pytest.raises(InputError, match=r"^pairs\.json: sample same: chosen and rejected are the same \(--strict"):
        build([kept, same], llava_tokenizer, strict=True)


def test_a_pair_whose_answers_are_the_same_once_cut_is_skipped_under_its_own_reason(tmp_path, llava_tokenizer):
    image = one_image(tmp_path)
    # The same first words, then different: cut after the shared words, nothing is left to prefer.
    pair = PreferenceSample("cut", image, "Is it red?", "Yes, it is red and round.", "Yes, it is red and square.")
    full = build([pair], llava_tokenizer)[0][0]
    chosen, rejected = full["chosen_input_ids"].tolist(), full["rejected_input_ids"].tolist()
    shared = next(i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r)
    assert shared >= 2
    prompt_length = len(full["prompt_input_ids"])
    dataset, skips = build([pair], llava_tokenizer, model_max_length=prompt_length + shared + 1)  # one differing token
    assert dataset[0]["chosen_input_ids"].tolist() == chosen[: shared + 1] != dataset[0]["rejected_input_ids"].tolist()
    skips, message = build_nothing([pair], llava_tokenizer, model_max_length=prompt_length + shared)
    reason = "chosen and rejected the same once cut at model_max_length"
    assert skips.counts == {reason: 1}
    assert skips.first_ids[reason] == [
        f"cut (they differ after token {shared} of the answer; model_max_length is {prompt_length + shared})"
    ]
    assert f"1 skipped ({reason}: 1 (e.g. cut (" in message
    with pytest.raises(InputError, match=f"sample cut .*: {reason} "):
        build([pair], llava_tokenizer, model_max_length=prompt_length + shared, strict=True)


def test_no_pair_left_names_the_files_and_every_reason(hadpo, llava_tokenizer):
    vg_path, desc, pope = hadpo
    skips = SkipCounter("HA-DPO pairs")
    samples = read_hadpo_pairs(vg_path, desc, pope, skips=skips)
    unusable = [s for s in samples if s.sample_id in ("pope:5", "desc:6")]  # a missing image; a corrupt one, twice
    with pytest.raises(InputError) as error:
        PreferenceDataset(unusable, llava_tokenizer, llava_tokenizer.convert_tokens_to_ids("<image>"), 16, 512, skips)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no preference pairs left to train on in {pope}, {desc}: 8 skipped (")
    for reason in ("missing image: 1 (e.g. pope:5", "unreadable image: 2 (e.g. desc:6", "empty answer: 2"):
        assert reason in message
    assert "noted: pope entries answered correctly (correct == true, not pairs; as HA-DPO): 1" in message


def test_only_correctly_answered_pope_entries_leave_no_pair_and_say_so(tmp_path, llava_tokenizer):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    pope = write_json(tmp_path / "pope.json", [{**POPE_ENTRY, "correct": True}] * 3)
    skips = SkipCounter("HA-DPO pairs")
    samples = read_hadpo_pairs(vg_path, pope_data_path=pope, skips=skips)
    with pytest.raises(InputError, match=r"0 skipped; noted: pope entries answered correctly .*: 3"):
        PreferenceDataset(samples, llava_tokenizer, llava_tokenizer.convert_tokens_to_ids("<image>"), 16, 512, skips)


POPE_ENTRY = {
    "image_id": 1,
    "question": "Is there a dog in the image?",
    "answer": "no",
    "chosen": "No, there is no dog.",
    "reject": "Yes, there is a dog.",
    "correct": False,
}


def test_skip_reasons_say_what_is_wrong(tmp_path):
    images = {i: ("VG_100K", "VG_100K", "RGB", (8, 8)) for i in (1, 6001)}
    vg_path = write_visual_genome(tmp_path / "VG", images)
    desc = write_json(
        tmp_path / "desc.json",
        {
            "1": {"chosen": [7, "A small picture."], "rejected": [None, "A dog."]},
            "6001": "A picture of a dog.",
            "6001.7": {"chosen": ["Fine."], "rejected": ["Not fine."]},
        },
    )
    pope = write_json(
        tmp_path / "pope.json",
        [
            POPE_ENTRY,
            "Is there a dog in the image?",
            {**POPE_ENTRY, "chosen": ["No."]},
            {**POPE_ENTRY, "question": 5},
            {**POPE_ENTRY, "image_id": 6001.7},
            {**POPE_ENTRY, "image_id": "6001.7"},
            {**POPE_ENTRY, "image_id": True},
            {**POPE_ENTRY, "image_id": "6001"},
            {**POPE_ENTRY, "question": " "},
        ],
    )
    skips = SkipCounter("HA-DPO pairs")
    samples = read_hadpo_pairs(vg_path, desc, pope, skips=skips, desc_repeat=1)
    assert [s.sample_id for s in samples] == ["pope:0", "pope:7", "desc:1"]
    assert (samples[2].chosen, samples[2].rejected) == ("A small picture.", "A dog.")
    assert skips.first_ids == {
        "not a string": [
            "desc:1 chosen[0] (int)",
            "desc:1 rejected[0] (NoneType)",
            "pope:2 ('chosen' is list)",
            "pope:3 ('question' is int)",
        ],
        "not an object": ["desc:6001 (a str)", "pope:1 (a str)"],
        "image id not a whole number": [
            "desc:6001.7 ('6001.7')",
            "pope:4 (6001.7)",
            "pope:5 ('6001.7')",
            "pope:6 (True)",
        ],
        "empty question": ["pope:8"],
    }
    pope = write_json(tmp_path / "pope.json", [POPE_ENTRY, {**POPE_ENTRY, "image_id": 6001.7}])
    with pytest.raises(InputError, match=r"pope\.json: sample pope:1 \(6001\.7\): image id not a whole number"):
        read_hadpo_pairs(vg_path, pope_data_path=pope, skips=SkipCounter("pairs", strict=True))


def test_a_visual_genome_index_with_an_id_twice_or_an_unusable_entry_is_an_error(tmp_path):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    desc = write_json(tmp_path / "desc.json", clean_descriptions(1))
    index = tmp_path / "VG" / "image_data.json"
    entry = {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg"}
    write_json(index, [entry, {"id": 2, "url": entry["url"]}, {**entry, "url": entry["url"] + "?"}])
    with pytest.raises(InputError, match=rf"^{index}: image id 1 is listed twice \(again at entry 2\)"):
        read_hadpo_pairs(vg_path, desc)
    write_json(index, [entry, {"image_id": 2.5, "url": entry["url"]}])
    with pytest.raises(InputError, match=rf"^{index}: entry 1 has no usable image id and url \(image_id 2\.5"):
        read_hadpo_pairs(vg_path, desc)


def test_a_data_file_that_is_not_utf8_or_not_json_names_itself(tmp_path):
    vg_path = write_visual_genome(tmp_path / "VG", {1: ("VG_100K", "VG_100K", "RGB", (8, 8))})
    latin = tmp_path / "desc.json"
    latin.write_bytes('{"1": {"chosen": ["Un caf\u00e9."], "rejected": ["Un th\u00e9."]}}'.encode("latin-1"))
    expected = rf"^{latin}: not UTF-8 text \(byte 25 is b'\\xe9'\); save the file as UTF-8$"
    with pytest.raises(InputError, match=expected):
        read_hadpo_pairs(vg_path, desc_data_path=str(latin))
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + '{"1": {"chosen": ["Un caf\u00e9."], "rejected": ["Non."]}}'.encode())
    assert read_hadpo_pairs(vg_path, desc_data_path=str(with_bom))[0].chosen == "Un caf\u00e9."
    with pytest.raises(InputError, match="HA-DPO pope_data.json not found: .*absent.json"):
        read_hadpo_pairs(vg_path, pope_data_path=str(tmp_path / "absent.json"))


def write_truncated_jpeg(path, keep=0.5):
    """A JPEG cut short: its header is whole, so PIL opens and verifies it; decoding fails."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with Image.open(path) as image:
        image.verify()  # the old start check let it through
    return str(path)


def test_a_truncated_jpeg_is_counted_before_training_and_a_file_gone_bad_later_names_everything(
    tmp_path, llava_tokenizer
):
    image = one_image(tmp_path)
    truncated = write_truncated_jpeg(tmp_path / "truncated.jpg")
    samples = [
        PreferenceSample("whole", image, "Is it red?", "Yes.", "No.", "pairs.json"),
        PreferenceSample("cut-short", truncated, "Is it red?", "Yes.", "No.", "pairs.json"),
    ]
    dataset, skips = build(samples, llava_tokenizer)
    assert [item["sample_id"] for item in dataset] == ["whole"]
    assert skips.counts == {"unreadable image": 1}
    detail = f"cut-short ({truncated}: OSError: image file is truncated"
    assert skips.first_ids["unreadable image"][0].startswith(detail)
    strict_message = r"^pairs\.json: sample cut-short \(.*truncated\.jpg: OSError: .*\): unreadable image \(--strict"
    with pytest.raises(InputError, match=strict_message):
        build(samples, llava_tokenizer, strict=True)
    write_truncated_jpeg(tmp_path / "VG" / "VG_100K" / "1.jpg")  # goes bad after the check
    served_message = r"^pairs\.json: sample whole: cannot read image .*1\.jpg: OSError: image file is truncated"
    with pytest.raises(InputError, match=served_message):
        dataset[0]


@pytest.mark.parametrize("tokenizer_name", ["tiny", "llama2"])
def test_llava_v1_mode_changes_the_system_prompt_ids_and_nothing_else(tmp_path, llava_tokenizer, tokenizer_name):
    tokenizer = llava_tokenizer if tokenizer_name == "tiny" else _llama2_with_llava_tokens()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    pair = PreferenceSample("p", one_image(tmp_path), "Is there a dog in the image?", "Yes, a dog.", "No.")
    items = {}
    for mode in CONV_MODES:
        dataset = PreferenceDataset([pair], tokenizer, image_token_id, IMAGE_SEQ_LENGTH, 512, conv_mode=mode)
        items[mode] = dataset[0]
    vicuna, llava = items["vicuna_v1"], items["llava_v1"]
    system = {mode: tokenizer(text).input_ids for mode, text in CONV_MODES.items()}  # BOS + the system prompt
    assert system["vicuna_v1"] != system["llava_v1"]
    rest = vicuna["prompt_input_ids"].tolist()[len(system["vicuna_v1"]) :]
    assert vicuna["prompt_input_ids"].tolist() == system["vicuna_v1"] + rest
    assert llava["prompt_input_ids"].tolist() == system["llava_v1"] + rest
    assert tokenizer.decode(rest).strip().startswith("USER:")
    for answer in ("chosen_input_ids", "rejected_input_ids"):
        assert llava[answer].tolist() == vicuna[answer].tolist()
    with pytest.raises(InputError, match="unknown conversation mode 'llava_v2'"):
        PreferenceDataset([pair], tokenizer, image_token_id, IMAGE_SEQ_LENGTH, 512, conv_mode="llava_v2")


def _llama2_with_llava_tokens():
    from transformers import AutoTokenizer

    return add_llava_tokens(AutoTokenizer.from_pretrained(shared_file("tokenizers", "llama2")))
