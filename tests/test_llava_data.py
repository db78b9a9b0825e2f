import json
import os

import pytest

from ha_dpo.data.llava_data import (
    SupervisedDataset,
    SupervisedSample,
    conversation_ids_and_answer_spans,
    read_llava_samples,
)
from ha_dpo.data.skips import SkipCounter
from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import (
    ASSISTANT,
    CONV_MODES,
    USER,
    Conversation,
    add_llava_tokens,
    tokenize_with_image,
)
from tests.helpers import shared_file
from tests.helpers.data_files import write_llava

IMAGE_SEQ_LENGTH = 16  # the tiny model's: (32 / 8) ** 2


@pytest.fixture
def llava(tmp_path):
    return write_llava(tmp_path / "llava")


def build(
    samples, tokenizer, image_seq_length=IMAGE_SEQ_LENGTH, model_max_length=512, strict=False, skips=None, **options
):
    skips = skips if skips is not None else SkipCounter("LLaVA samples", strict=strict)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    dataset = SupervisedDataset(
        samples, tokenizer, image_token_id, image_seq_length, model_max_length, skips, **options
    )
    return dataset, skips


def build_nothing(samples, tokenizer, model_max_length=512):
    """The skips of a dataset left with no sample, which must refuse to be built, saying why."""
    skips = SkipCounter("LLaVA samples")
    with pytest.raises(InputError, match=r"^no LLaVA samples left to train on in .*: \d+ skipped \(") as error:
        build(samples, tokenizer, model_max_length=model_max_length, skips=skips)
    return skips, str(error.value)


def test_reading_keeps_text_only_samples_and_counts_every_bad_one(llava):
    data_path, image_folder = llava
    skips = SkipCounter("LLaVA samples")
    samples = read_llava_samples(data_path, image_folder, skips=skips)
    assert [s.sample_id for s in samples] == [
        "multi",
        "text-only",
        "gpt-first",
        "missing-image",
        "corrupt-image",
        "rgba",
        "palette",
    ]
    assert skips.first_ids == {
        "missing key 'conversations'": ["no-conversations"],
        "empty answer": ["empty-answer"],
        "unknown role 'system'": ["system-role"],
        "turns do not alternate human, gpt": ["#10"],
        "last question has no answer": ["unanswered"],
        "<image> in a sample without an image": ["stray-image-token"],
    }
    assert skips.notes["samples without an image (kept; the block passes them through)"] == 1
    assert skips.notes["first turns from gpt dropped (as LLaVA)"] == 1
    assert skips.notes["image samples without <image> in the text (put before the first question)"] == 1
    by_id = {s.sample_id: s for s in samples}
    assert by_id["text-only"].image is None and by_id["multi"].image == f"{image_folder}/a.png"
    assert by_id["multi"].turns == (
        (USER, "<image>\nWhat is this?"),
        (ASSISTANT, "A red circle."),
        (USER, "What colour is it?"),
        (ASSISTANT, "Red, on grass."),
    )
    assert by_id["gpt-first"].turns == (
        (USER, "<image>\nDescribe the image in detail."),
        (ASSISTANT, "A grey square."),
    )
    assert by_id["palette"].turns[0] == (USER, "<image>\nDescribe the image.")


def test_text_only_samples_can_be_left_out_and_are_counted(llava):
    skips = SkipCounter("LLaVA samples")
    samples = read_llava_samples(*llava, keep_text_only=False, skips=skips)
    assert "text-only" not in [s.sample_id for s in samples]
    assert all(s.image is not None for s in samples)
    # text-only, system-role, #10 and stray-image-token: left out before any other check
    assert skips.notes["samples without an image (left out: keep_text_only is off)"] == 4
    assert skips.counts == {"missing key 'conversations'": 1, "empty answer": 1, "last question has no answer": 1}


def test_strict_stops_at_the_first_bad_sample_naming_file_and_id(llava):
    with pytest.raises(ValueError, match=r"llava\.json: sample no-conversations: missing key 'conversations'"):
        read_llava_samples(*llava, skips=SkipCounter("LLaVA samples", strict=True))


def test_dataset_skips_missing_and_corrupt_images_and_opens_every_mode_as_rgb(llava, llava_tokenizer):
    samples = read_llava_samples(*llava)
    dataset, skips = build(samples, llava_tokenizer)
    assert skips.counts == {"missing image": 1, "unreadable image": 1}
    assert skips.first_ids["missing image"] == [f"missing-image ({llava[1]}/absent.png)"]
    items = {item["sample_id"]: item for item in dataset}
    assert list(items) == ["multi", "text-only", "gpt-first", "rgba", "palette"]
    assert items["text-only"]["image"] is None
    assert {name: items[name]["image"].size for name in ("multi", "gpt-first", "rgba", "palette")} == {
        "multi": (37, 91),
        "gpt-first": (64, 48),
        "rgba": (50, 50),
        "palette": (91, 37),
    }
    assert all(items[name]["image"].mode == "RGB" for name in ("multi", "gpt-first", "rgba", "palette"))


def whole_prompt(turns):
    conversation = Conversation()
    for role, text in turns:
        (conversation.add_user if role == USER else conversation.add_assistant)(text)
    return conversation.prompt()


def llava_v1_labels(conversation, tokenizer, image_token_id, non_legacy_correction):
    """LLaVA's preprocess_v1 masking, restated: split the conversation at "</s>" into rounds, at
    " ASSISTANT: " into instruction and answer; mask BOS and each instruction (its length minus
    BOS and the trailing-space token); the latest LLaVA subtracts one more per later round for
    tokenizers without legacy spacing. The image is one placeholder, as in LLaVA."""

    def tokenize(text):
        return tokenize_with_image(text, tokenizer, image_token_id, 1)

    ids = tokenize(conversation)
    labels = list(ids)
    labels[0] = -100
    position = 1
    for number, round_text in enumerate(conversation.split("</s>")):
        if round_text == "":
            break
        parts = round_text.split(" ASSISTANT: ")
        if len(parts) != 2:
            break
        round_length = len(tokenize(round_text))
        instruction_length = len(tokenize(parts[0] + " ASSISTANT: ")) - 2
        if number and non_legacy_correction:
            round_length, instruction_length = round_length - 1, instruction_length - 1
        for index in range(position, min(position + instruction_length, len(labels))):
            labels[index] = -100
        position += round_length
    for index in range(position, len(labels)):
        labels[index] = -100
    assert position == len(ids), "tokenization mismatch: LLaVA would mask this sample entirely"
    return ids, labels


def prefix_labels(turns, tokenizer, image_token_id):
    """Labels found from whole-string prefixes: an answer spans from the ids of everything up to its
    "ASSISTANT:" to the ids of everything up to its "</s>"."""
    ids = tokenize_with_image(whole_prompt(turns), tokenizer, image_token_id, 1)
    labels = [-100] * len(ids)
    for answer in range(1, len(turns), 2):
        head = tokenize_with_image(whole_prompt(turns[:answer]) + "ASSISTANT:", tokenizer, image_token_id, 1)
        body = tokenize_with_image(whole_prompt(turns[: answer + 1]), tokenizer, image_token_id, 1)
        assert ids[: len(body)] == body and body[: len(head)] == head
        labels[len(head) : len(body)] = body[len(head) :]
    return ids, labels


SINGLE_TURN = [
    ((USER, "<image>\nIs there a dog in the image?"), (ASSISTANT, "Yes, there is a dog in the image.")),
    (
        (USER, "<image>\nDescribe the image in detail."),
        (ASSISTANT, "The image shows a red circle next to a blue square."),
    ),
    ((USER, "Is there a cat?"), (ASSISTANT, "No, there is no cat.")),
]
MULTI_TURN = [
    ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A dog."), (USER, "What colour is it?"), (ASSISTANT, "Brown.")),
    (
        (USER, "Hello?"),
        (ASSISTANT, "Hi."),
        (USER, "Is there a cup?"),
        (ASSISTANT, "Yes, two cups."),
        (USER, "Where?"),
        (ASSISTANT, "On a table."),
    ),
]


def supervised_item(turns, tokenizer, image_seq_length=1, tmp_image=None):
    has_image = any("<image>" in text for _, text in turns)
    dataset, _ = build([SupervisedSample("s", tmp_image if has_image else None, turns)], tokenizer, image_seq_length)
    return dataset[0]


@pytest.fixture
def image_file(tmp_path):
    from tests.helpers.data_files import write_image

    write_image(tmp_path / "image.png", "RGB", (8, 8))
    return str(tmp_path / "image.png")


@pytest.mark.parametrize("turns", SINGLE_TURN)
def test_labels_are_llava_v1s_on_single_turns(turns, llava_tokenizer, image_file):
    item = supervised_item(turns, llava_tokenizer, tmp_image=image_file)
    ids, labels = llava_v1_labels(
        whole_prompt(turns), llava_tokenizer, llava_tokenizer.convert_tokens_to_ids("<image>"), True
    )
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    supervised = [token for token in labels if token != -100]
    assert supervised == llava_tokenizer(turns[1][1], add_special_tokens=False).input_ids + [
        llava_tokenizer.eos_token_id
    ]


@pytest.mark.parametrize("turns", SINGLE_TURN + MULTI_TURN)
def test_labels_cover_the_answers_and_their_eos_only(turns, llava_tokenizer, image_file):
    item = supervised_item(turns, llava_tokenizer, tmp_image=image_file)
    ids, labels = prefix_labels(turns, llava_tokenizer, llava_tokenizer.convert_tokens_to_ids("<image>"))
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    eos = llava_tokenizer.eos_token_id
    assert sum(token == eos for token in item["labels"].tolist()) == len(turns) // 2


def test_image_tokens_are_expanded_and_never_supervised(llava_tokenizer, image_file):
    turns = MULTI_TURN[0]
    compact = supervised_item(turns, llava_tokenizer, 1, image_file)
    expanded = supervised_item(turns, llava_tokenizer, IMAGE_SEQ_LENGTH, image_file)
    image_token_id = llava_tokenizer.convert_tokens_to_ids("<image>")
    assert expanded["input_ids"].tolist() == tokenize_with_image(
        whole_prompt(turns), llava_tokenizer, image_token_id, IMAGE_SEQ_LENGTH
    )
    at_image = expanded["input_ids"] == image_token_id
    assert int(at_image.sum()) == IMAGE_SEQ_LENGTH and bool((expanded["labels"][at_image] == -100).all())
    assert expanded["labels"][~at_image].tolist() == compact["labels"][compact["input_ids"] != image_token_id].tolist()


def test_model_max_length_cuts_answers_and_skips_a_sample_left_without_any(llava_tokenizer, image_file):
    turns = MULTI_TURN[0]
    full = supervised_item(turns, llava_tokenizer, IMAGE_SEQ_LENGTH, image_file)
    labels = full["labels"].tolist()
    first_answer = next(i for i, token in enumerate(labels) if token != -100)
    last_answer = max(i for i, token in enumerate(labels) if token != -100)
    sample = SupervisedSample("long", image_file, turns)
    dataset, skips = build([sample], llava_tokenizer, model_max_length=last_answer)  # cuts the last answer's </s>
    assert dataset[0]["labels"].tolist() == labels[:last_answer]
    assert skips.notes["samples cut at model_max_length"] == 1
    skips, _ = build_nothing([sample], llava_tokenizer, model_max_length=first_answer)
    assert skips.first_ids["no answer token within model_max_length"] == [
        f"long (the first answer starts beyond token {first_answer})"
    ]
    skips, _ = build_nothing([sample], llava_tokenizer, model_max_length=5)
    assert skips.counts == {"image tokens cut by model_max_length": 1}
    with pytest.raises(ValueError, match="sample long .*no answer token within model_max_length"):
        build([sample], llava_tokenizer, model_max_length=first_answer, strict=True)


@pytest.fixture(scope="module")
def llama2():
    from transformers import AutoTokenizer

    return add_llava_tokens(AutoTokenizer.from_pretrained(shared_file("tokenizers", "llama2")))


@pytest.mark.parametrize("turns", SINGLE_TURN + MULTI_TURN)
def test_labels_are_llava_v1s_with_the_real_tokenizer(turns, llama2, image_file):
    tokenizer = llama2
    item = supervised_item(turns, tokenizer, tmp_image=image_file)
    ids, labels = llava_v1_labels(whole_prompt(turns), tokenizer, 32000, non_legacy_correction=True)
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    answers = [text for role, text in turns if role == ASSISTANT]
    expected = [token for answer in answers for token in tokenizer(answer, add_special_tokens=False).input_ids + [2]]
    assert [token for token in labels if token != -100] == expected


def test_conversation_ids_refuse_turns_that_do_not_end_with_an_answer(llava_tokenizer):
    image_token_id = llava_tokenizer.convert_tokens_to_ids("<image>")
    for turns in (((USER, "Why?"),), ((USER, "Why?"), (USER, "Why not?")), ((ASSISTANT, "Yes."), (USER, "Why?"))):
        with pytest.raises(ValueError, match="alternate"):
            conversation_ids_and_answer_spans(turns, llava_tokenizer, image_token_id)


def test_a_sample_whose_image_and_image_token_disagree_is_skipped(llava_tokenizer, image_file):
    samples = [
        SupervisedSample("file-without-token", image_file, ((USER, "What is this?"), (ASSISTANT, "A dog."))),
        SupervisedSample("token-without-file", None, ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A dog."))),
    ]
    skips, _ = build_nothing(samples, llava_tokenizer)
    assert skips.first_ids["image and <image> do not match"] == [
        "file-without-token (0 <image> in the text, an image file)",
        "token-without-file (1 <image> in the text, no image file)",
    ]


# --- input errors and skip reasons that say what is wrong; the conversation mode -------------


def test_an_entry_that_is_not_an_object_is_counted_as_such(tmp_path, image_file):
    data = [
        {"id": "kept", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]},
        "What is this?",
        ["a", "list"],
    ]
    data_path = tmp_path / "llava.json"
    data_path.write_text(json.dumps(data))
    skips = SkipCounter("LLaVA samples")
    samples = read_llava_samples(str(data_path), str(tmp_path), skips=skips)
    assert [s.sample_id for s in samples] == ["kept"]
    assert skips.first_ids == {"not an object": ["#1 (a str)", "#2 (a list)"]}
    with pytest.raises(InputError, match=r"llava\.json: sample #1 \(a str\): not an object \(--strict"):
        read_llava_samples(str(data_path), str(tmp_path), skips=SkipCounter("LLaVA samples", strict=True))


def test_a_data_file_that_is_not_utf8_or_not_a_list_names_itself(tmp_path):
    data_path = tmp_path / "llava.json"
    data_path.write_bytes(b'[{"id": "x", "conversations": []}]\n\xff')
    expected = rf"^{data_path}: not UTF-8 text \(byte 35 is b'\\xff'\); save the file as UTF-8$"
    with pytest.raises(InputError, match=expected):
        read_llava_samples(str(data_path))
    data_path.write_text('{"id": "x"}')
    with pytest.raises(InputError, match=rf"^{data_path}: expected a list of samples, found dict"):
        read_llava_samples(str(data_path))


def test_no_sample_left_names_the_file_and_the_reasons(llava, llava_tokenizer):
    data_path, image_folder = llava
    skips = SkipCounter("LLaVA samples")
    samples = read_llava_samples(data_path, image_folder, skips=skips)
    unusable = [s for s in samples if s.sample_id in ("missing-image", "corrupt-image")]
    with pytest.raises(InputError) as error:
        build(unusable, llava_tokenizer, skips=skips)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"no LLaVA samples left to train on in {data_path}: 8 skipped (")
    assert "missing image: 1 (e.g. missing-image (" in message and "unknown role 'system': 1" in message


def test_an_image_gone_bad_after_the_check_names_the_file_sample_and_image(tmp_path, llava_tokenizer, image_file):
    sample = SupervisedSample("s", image_file, ((USER, "<image>\nWhat is this?"), (ASSISTANT, "A dog.")), "llava.json")
    dataset, _ = build([sample], llava_tokenizer)
    os.remove(image_file)
    expected = r"^llava\.json: sample s: image not found: .*image\.png \(it passed the check"
    with pytest.raises(InputError, match=expected):
        dataset[0]


@pytest.mark.parametrize("tokenizer_name", ["tiny", "llama2"])
@pytest.mark.parametrize("turns", [SINGLE_TURN[0], MULTI_TURN[1]])
def test_llava_v1_mode_changes_the_system_prompt_ids_and_nothing_else(
    turns, tokenizer_name, llava_tokenizer, image_file, request
):
    tokenizer = llava_tokenizer if tokenizer_name == "tiny" else request.getfixturevalue("llama2")
    has_image = any("<image>" in text for _, text in turns)
    sample = SupervisedSample("s", image_file if has_image else None, turns)
    items = {mode: build([sample], tokenizer, conv_mode=mode)[0][0] for mode in CONV_MODES}
    system = {mode: tokenizer(text).input_ids for mode, text in CONV_MODES.items()}  # BOS + the system prompt
    assert system["vicuna_v1"] != system["llava_v1"]
    vicuna, llava = items["vicuna_v1"], items["llava_v1"]
    shift = len(system["llava_v1"]) - len(system["vicuna_v1"])
    rest = vicuna["input_ids"].tolist()[len(system["vicuna_v1"]) :]
    assert vicuna["input_ids"].tolist() == system["vicuna_v1"] + rest
    assert llava["input_ids"].tolist() == system["llava_v1"] + rest
    assert tokenizer.decode(rest[:4]).strip().startswith("USER")
    masked = [-100] * len(system["llava_v1"])
    assert llava["labels"].tolist() == masked + vicuna["labels"].tolist()[len(system["vicuna_v1"]) :]
    assert len(llava["labels"]) == len(vicuna["labels"]) + shift
    with pytest.raises(InputError, match="unknown conversation mode 'vicuna'"):
        build([sample], tokenizer, conv_mode="vicuna")


def test_an_image_turn_without_a_question_is_the_image_alone_as_llava_strips_it(llama2, image_file):
    """LLaVA's preprocess_multimodal strips the turn to "<image>" (no line break): "... USER: <image> ASSISTANT:
    A cat.</s>", split on <image> as tokenizer_image_token splits it. The ids, written out from that rule."""
    item = supervised_item(((USER, "<image>"), (ASSISTANT, "A cat.")), llama2, tmp_image=image_file)
    system = [1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444,
              29892, 13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889]  # fmt: skip
    user, assistant, answer = [3148, 1001, 29901, 29871], [319, 1799, 9047, 13566, 29901], [319, 6635, 29889, 2]
    assert item["input_ids"].tolist() == system + user + [32000] + assistant + answer
    assert item["labels"].tolist() == [-100] * (len(system) + len(user) + 1 + len(assistant)) + answer
    assert item["prompt_text"] == ""
