"""The backbone cache with supervised fine-tuning (train_llava_post.py): the loss on the label positions alone
equals the model's own loss, and training from the cache equals training without it."""

import os

import pytest
import torch
from safetensors.torch import load_file

from ha_dpo.data.token_ids import IGNORE_INDEX
from ha_dpo.trainer.checkpoints import TRAINABLE_WEIGHTS
from ha_dpo.trainer.trainer import SupervisedModel
from post_decoder.families.llava.tiny import save_llava_hf
from tests.helpers import add_noise, image_batch, with_block
from tests.helpers.backbone_cache import BackboneCalls, assert_same_weights
from tests.helpers.data_files import write_llava


@pytest.mark.parametrize("variant", ["post_interaction", "no_cross_attn", "transformer_block"])
def test_the_loss_on_label_positions_equals_the_models_own_loss(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant, perturb=0.1, seed=2)
    add_noise(model.lm_head, 0.05)
    batch = image_batch(model, llava_tokenizer, ["Is there a dog?", "Describe the image in detail."], [True, False],
                        padding_side="right")  # fmt: skip
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, : labels.shape[1] - 6] = IGNORE_INDEX  # the last few real tokens of each row are the "answer"
    assert (labels != IGNORE_INDEX).sum() > 4

    expected = model(**batch, labels=labels).loss
    expected.backward()
    expected_gradients = {name: p.grad.clone() for name, p in model.post_decoder.named_parameters()}
    model.zero_grad()
    loss = SupervisedModel(model)(**batch, labels=labels)["loss"]
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for name, parameter in model.post_decoder.named_parameters():
        torch.testing.assert_close(parameter.grad, expected_gradients[name], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def base_and_data(plain_llava, llava_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone_cache_sft")
    data_path, image_folder = write_llava(root / "llava")
    return save_llava_hf(plain_llava, llava_tokenizer, str(root / "base")), data_path, image_folder


def train_sft(base_and_data, output_dir, *extra):
    from ha_dpo.cli.train_llava_post import main

    base, data_path, image_folder = base_and_data
    main(["--model_name_or_path", base, "--data_path", data_path, "--image_folder", image_folder,
          "--tune_post_decoder", "True", "--use_cpu", "True", "--output_dir", str(output_dir), "--max_steps", "4",
          "--per_device_train_batch_size", "2", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant",
          "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
          "--model_max_length", "512", "--disable_tqdm", "True", "--plot", "False", *extra])  # fmt: skip
    return load_file(os.path.join(output_dir, TRAINABLE_WEIGHTS))


def test_supervised_training_from_the_cache_equals_training_without_it(base_and_data, tmp_path, monkeypatch):
    plain = train_sft(base_and_data, tmp_path / "plain")
    cache = ["--backbone_cache", str(tmp_path / "cache")]
    built = train_sft(base_and_data, tmp_path / "built", *cache)
    calls = BackboneCalls(monkeypatch)
    read = train_sft(base_and_data, tmp_path / "read", *cache)
    assert calls.count == 0
    assert_same_weights(plain, built)
    assert_same_weights(plain, read)
    assert any(tensor.abs().sum() > 0 for name, tensor in plain.items() if "down_proj" in name)  # it learned


def test_transformer_block_sft_is_refused_a_cache(base_and_data, tmp_path):
    with pytest.raises(ValueError, match="transformer_block's self-attention reads every position of a sample"):
        train_sft(base_and_data, tmp_path / "run", "--post_decoder_variant", "transformer_block",
                  "--backbone_cache", str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(ValueError, match="kind .preference pairs. there, .supervised samples. now"):  # never DPO's
        train_sft(base_and_data, tmp_path / "dpo", "--backbone_cache", str(dpo_cache(tmp_path)))


def dpo_cache(tmp_path):
    """A folder with a DPO cache's manifest (only its `kind` differs from what an SFT run would write)."""
    import json

    from ha_dpo.cache.identity import MANIFEST

    folder = tmp_path / "dpo_cache"
    folder.mkdir()
    identity = dict.fromkeys(["family", "backbone_weights", "backbone_config", "compute_dtype", "image_processing",
                              "vision_source", "tokenizer", "conv_mode", "cache_dtype"], "")  # fmt: skip
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "identity": {**identity, "kind": "preference pairs"},
                                               "prompt_states": False}))  # fmt: skip
    return folder
