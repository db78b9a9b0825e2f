"""Converting an original LLaVA-1.5 checkpoint: the same added rows and config values as transformers'
official conversion script (models/llava/convert_llava_weights_to_hf.py), and errors a person can act on.

The expected values below were obtained by running the official script's `convert_llava_llama_to_hf`
(transformers 5.24, hub calls pointed at local folders, `push_to_hub` saving locally, the tiny CLIP
tower's config passed in) beside ours on the same tiny original checkpoint with Llama 2's 32,000-token
vocabulary.
"""

import copy
import json
import math
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from post_decoder.families.llava import LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.original import load_original_llava
from post_decoder.families.llava.original import main as convert_main
from post_decoder.families.llava.tiny import make_tiny_llava, save_llava_hf, save_original_llava
from post_decoder.saving import load_sharded_state_dict
from tests.helpers import shared_file

EMBEDDINGS, HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"


# --- the added rows: N(mean of the embedding rows, 1e-5 * covariance of the embedding rows) ---


def skewed_original(plain, text_vocab, tokenizer_dir, folder):
    """An original checkpoint whose embedding rows (mean 0.5, anisotropic: standard deviations from 0.03
    to 1 along rotated axes) and lm_head rows (mean -0.3, isotropic 2) have clearly different statistics."""
    model = copy.deepcopy(plain)
    generator = torch.Generator().manual_seed(7)
    width = model.config.text_config.hidden_size
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=generator))
    scales = torch.logspace(-1.5, 0, width)
    with torch.no_grad():
        noise = torch.randn(text_vocab, width, generator=generator)
        model.model.language_model.embed_tokens.weight[:text_vocab] = 0.5 + (noise * scales) @ rotation.T
        model.lm_head.weight[:text_vocab] = -0.3 + 2.0 * torch.randn(text_vocab, width, generator=generator)
    return save_original_llava(model, text_vocab, tokenizer_dir, folder)


def follows_official_distribution(rows, embedding_rows) -> bool:
    """Whether `rows` look like draws from N(mu, 1e-5 * Sigma) of `embedding_rows`: whitened by that
    distribution they must have mean 0 (n * |column means|^2 ~ chi2_d) and second moment 1 (6 sigma)."""
    rows, reference = rows.double(), embedding_rows.double()
    mean = reference.mean(dim=0)
    centred = reference - mean
    cholesky = torch.linalg.cholesky(1e-5 * centred.T @ centred / reference.shape[0])
    whitened = torch.linalg.solve_triangular(cholesky, (rows - mean).T, upper=False).T
    count, width = whitened.shape
    second_moment = whitened.pow(2).mean().item()
    mean_statistic = (count * whitened.mean(dim=0).pow(2).sum()).item()
    return abs(second_moment - 1) < 6 * math.sqrt(2 / (count * width)) and mean_statistic < width + 6 * math.sqrt(
        2 * width
    )


@pytest.fixture(scope="module")
def skewed_conversion(plain_llava, text_vocab_size, tokenizer_dir, tmp_path_factory):
    folder = skewed_original(plain_llava, text_vocab_size, tokenizer_dir, str(tmp_path_factory.mktemp("skewed")))
    model, _, _ = load_original_llava(folder, LlavaPostDecoderForConditionalGeneration)
    return folder, model.state_dict()


def test_added_rows_of_embeddings_and_head_follow_the_embedding_distribution(skewed_conversion, text_vocab_size):
    folder, converted = skewed_conversion
    original = load_sharded_state_dict(folder)
    embedding_rows, head_rows = original["model.embed_tokens.weight"], original["lm_head.weight"]
    added_embeddings, added_head = converted[EMBEDDINGS][text_vocab_size:], converted[HEAD][text_vocab_size:]
    assert added_embeddings.shape[0] == added_head.shape[0] >= 2 and (text_vocab_size + added_head.shape[0]) % 64 == 0
    assert follows_official_distribution(added_embeddings, embedding_rows)
    assert follows_official_distribution(added_head, embedding_rows)
    assert not torch.equal(added_embeddings, added_head)  # independent draws, as the official script makes

    # The check has the power to tell the alternatives apart (same number of rows, fixed seed):
    generator_seed, count = 3, added_head.shape[0]
    torch.manual_seed(generator_seed)

    def draws(rows, scale, isotropic=False):
        rows = rows.double()
        mean, centred = rows.mean(dim=0), rows - rows.mean(dim=0)
        covariance = centred.T @ centred / rows.shape[0]
        if isotropic:
            covariance = torch.eye(rows.shape[1], dtype=rows.dtype) * covariance.trace() / rows.shape[1]
        return torch.distributions.MultivariateNormal(mean, scale * covariance).sample((count,))

    assert follows_official_distribution(draws(embedding_rows, 1e-5), embedding_rows)
    assert not follows_official_distribution(draws(embedding_rows, 1e-9), embedding_rows)  # the old draw, embeddings
    assert not follows_official_distribution(draws(head_rows, 1e-9), embedding_rows)  # the old draw, lm_head
    assert not follows_official_distribution(draws(head_rows, 1e-5), embedding_rows)  # lm_head's own statistics
    assert not follows_official_distribution(draws(embedding_rows, 1e-5, isotropic=True), embedding_rows)


def test_conversion_is_reproducible_whatever_the_global_seed(skewed_conversion, text_vocab_size):
    folder, first = skewed_conversion
    torch.manual_seed(12345)
    again, _, _ = load_original_llava(folder, LlavaPostDecoderForConditionalGeneration)
    for name in (EMBEDDINGS, HEAD):
        assert torch.equal(again.state_dict()[name][text_vocab_size:], first[name][text_vocab_size:])


# --- config and tokenizer values: those the official script writes ---

# config.json of the official script's output (the tiny original, Llama 2's vocabulary), less the
# vision config (given to it), `architectures`, `dtype`, `transformers_version` and text_config's `_name_or_path`.
OFFICIAL_CONFIG = {
    "image_token_index": 32000,
    "model_type": "llava",
    "multimodal_projector_bias": True,
    "pad_token_id": 32001,
    "projector_hidden_act": "gelu",
    "tie_word_embeddings": False,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "image_seq_length": 576,  # its default, the CLIP-L/336 tower's (336 / 14) ** 2; ours derives it from the tower
}
OFFICIAL_TEXT_CONFIG = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 1024,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 32064,
}
OFFICIAL_GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32001}
# id -> (content, special, normalized) of the tokens the official script's tokenizer has beyond the text vocabulary
OFFICIAL_ADDED_TOKENS = {32000: ("<image>", True, False), 32001: ("<pad>", True, False)}


def assert_official_values(folder, text_vocab, official_config, official_text_config, generation, added_tokens):
    with open(os.path.join(folder, "config.json")) as handle:
        config = json.load(handle)
    vision = config["vision_config"]
    assert config["image_seq_length"] == (vision["image_size"] // vision["patch_size"]) ** 2
    assert config["model_type"] == "llava_post_decoder" and config["post_decoder_config"] is None
    ignored = {
        "image_seq_length",
        "model_type",
        "architectures",
        "dtype",
        "transformers_version",
        "vision_config",
        "text_config",
    }
    assert {key: value for key, value in config.items() if key not in ignored | {"post_decoder_config"}} == {
        key: value for key, value in official_config.items() if key not in ignored
    }
    assert config["text_config"] == official_text_config
    with open(os.path.join(folder, "generation_config.json")) as handle:
        generation_config = json.load(handle)
    assert {key: generation_config[key] for key in generation} == generation
    tokenizer = AutoTokenizer.from_pretrained(folder)
    added = {
        index: (token.content, token.special, token.normalized)
        for index, token in tokenizer.added_tokens_decoder.items()
        if index >= text_vocab
    }
    assert added == added_tokens
    assert len(tokenizer) == text_vocab + 2 and tokenizer.pad_token == "<pad>"


def test_config_and_tokens_are_the_official_scripts_on_llama2s_vocabulary(tmp_path):
    tokenizer_dir = shared_file("tokenizers", "llama2")
    original = save_original_llava(make_tiny_llava(32000), 32000, tokenizer_dir, str(tmp_path / "original"))
    convert_main(["--model-path", original, "--out", str(tmp_path / "converted"), "--dtype", "float32"])
    assert_official_values(
        str(tmp_path / "converted"),
        32000,
        OFFICIAL_CONFIG,
        OFFICIAL_TEXT_CONFIG,
        OFFICIAL_GENERATION_CONFIG,
        OFFICIAL_ADDED_TOKENS,
    )


def test_config_and_tokens_follow_the_official_rules_on_any_vocabulary(
    plain_llava, text_vocab_size, tokenizer_dir, tmp_path
):
    """The official script writes 32000 and 32001: for another vocabulary V, the same rules give V and V + 1."""
    original = save_original_llava(plain_llava, text_vocab_size, tokenizer_dir, str(tmp_path / "original"))
    convert_main(["--model-path", original, "--out", str(tmp_path / "converted"), "--dtype", "float32"])
    padded = (text_vocab_size + 2 + 63) // 64 * 64
    assert_official_values(
        str(tmp_path / "converted"),
        text_vocab_size,
        {**OFFICIAL_CONFIG, "image_token_index": text_vocab_size, "pad_token_id": text_vocab_size + 1},
        {**OFFICIAL_TEXT_CONFIG, "max_position_embeddings": 1024, "vocab_size": padded},
        {**OFFICIAL_GENERATION_CONFIG, "pad_token_id": text_vocab_size + 1},
        {text_vocab_size: ("<image>", True, False), text_vocab_size + 1: ("<pad>", True, False)},
    )


# --- errors: one line naming the file or flag, exit code 2, no traceback ---


def command_error(capsys, argv) -> str:
    capsys.readouterr()  # what building the inputs printed
    with pytest.raises(SystemExit) as exit_info:
        convert_main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("post_decoder.original_llava: error: ") and message.count("\n") == 1, message
    assert "Traceback" not in message and "weights_only" not in message
    return message


@pytest.fixture
def original_copy(plain_llava, text_vocab_size, tokenizer_dir, tmp_path):
    return save_original_llava(plain_llava, text_vocab_size, tokenizer_dir, str(tmp_path / "original"))


def test_a_llava_hf_folder_is_said_to_need_no_conversion(plain_llava, llava_tokenizer, tmp_path, capsys):
    folder = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "hf"))
    message = command_error(capsys, ["--model-path", folder, "--out", str(tmp_path / "out")])
    assert f"--model-path {folder} is already in the llava-hf format" in message and "load it directly" in message
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_model_path_is_said_to_be_missing(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "no-such-folder")
    message = command_error(capsys, ["--model-path", missing, "--out", str(tmp_path / "out")])
    assert f"--model-path {missing}: no such folder" in message and "hub id" in message and "needs internet" in message
    import huggingface_hub.constants

    # a hub id, offline (read at import, hence both): the same answer, not the hub's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = command_error(capsys, ["--model-path", "nobody/no-such-llava", "--out", str(tmp_path / "out")])
    assert "--model-path nobody/no-such-llava: no such folder" in message and "needs internet" in message


def test_an_output_that_is_a_file_or_a_full_folder_is_refused(original_copy, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    message = command_error(capsys, ["--model-path", original_copy, "--out", str(tmp_path / "file")])
    assert f"--out {tmp_path / 'file'} is a file; name a new folder" in message
    assert (tmp_path / "file").read_text() == "mine"
    message = command_error(capsys, ["--model-path", original_copy, "--out", str(tmp_path / "file" / "below")])
    assert "which is a file" in message
    message = command_error(capsys, ["--model-path", original_copy, "--out", original_copy])
    assert "exists and is not empty; name a new folder" in message


def shard_path(folder, number):
    return os.path.join(folder, f"pytorch_model-0000{number}-of-00002.bin")


def test_a_truncated_bin_shard_is_named(original_copy, tmp_path, capsys):
    path = shard_path(original_copy, 2)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    message = command_error(capsys, ["--model-path", original_copy, "--out", str(tmp_path / "out")])
    assert f"{path} cannot be read as a PyTorch weight file" in message and "truncated" in message


def test_a_bin_holding_more_than_tensors_is_named_without_suggesting_unsafe_loading(original_copy, tmp_path, capsys):
    import argparse

    path = shard_path(original_copy, 1)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "training_args": argparse.Namespace(lr=1e-4)}, path)
    message = command_error(capsys, ["--model-path", original_copy, "--out", str(tmp_path / "out")])
    assert f"{path} holds Python objects besides tensors (argparse.Namespace)" in message


def test_a_truncated_safetensors_file_is_named(original_copy, tmp_path, capsys):
    state = load_sharded_state_dict(original_copy)
    for name in os.listdir(original_copy):
        if name.startswith("pytorch_model"):
            os.remove(os.path.join(original_copy, name))
    path = os.path.join(original_copy, "model.safetensors")
    save_file(state, path)
    os.truncate(path, os.path.getsize(path) - 100)
    message = command_error(capsys, ["--model-path", original_copy, "--out", str(tmp_path / "out")])
    assert f"{path} cannot be read as safetensors" in message and "truncated" in message


def test_a_crash_while_saving_leaves_no_folder_and_no_stray_file(original_copy, tmp_path, monkeypatch):
    import transformers.modeling_utils

    real_save = transformers.modeling_utils.safe_save_file
    crashed = []

    def crash_half_way(tensors, filename, *args, **kwargs):  # the weights half written, then the disk is full
        crashed.append(filename)
        real_save(dict(list(tensors.items())[: len(tensors) // 2]), filename, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", crash_half_way)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match="disk full"):
        convert_main(["--model-path", original_copy, "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert crashed and sorted(os.listdir(tmp_path)) == before
