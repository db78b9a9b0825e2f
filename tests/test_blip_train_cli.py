"""The training commands on the BLIP family's tiny folders (InstructBLIP in the hub's layout; MiniGPT-4, Llama-2 and
Vicuna versions, as the converter writes them) with the same HA-DPO and LLaVA-format data and flags as LLaVA's:
stage 1 -> merge -> stage 2 -> merge -> load gives the trained model over the base's backbone, bit for bit; SFT
trains; training from a backbone cache (InstructBLIP's keyed on the Q-Former's question) equals training without
it. In this process."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file

from ha_dpo.trainer.checkpoints import TRAINABLE_WEIGHTS, write_trainable_checkpoint
from post_decoder import PostDecoderConfig
from post_decoder.builder import load_pretrained_model
from post_decoder.families.instructblip.tiny import make_tiny_hub_folder
from post_decoder.families.minigpt4.original import main as convert_minigpt4
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    save_original_minigpt4,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
)
from post_decoder.family import family_for
from tests.helpers import named
from tests.helpers.data_files import write_hadpo, write_llava
from tests.helpers.training_runs import backbone_state, merge, train_dpo, train_sft

VIT_LAYERS = 2  # the tiny MiniGPT-4's ViT depth (the converter is told it, as for the real EVA ViT-g's 39)
FAMILIES = ("instructblip", "minigpt4_llama2", "minigpt4_vicuna0")


def minigpt4_folder(root, has_qformer: bool) -> str:
    tokenizer_dir = str(root / "tokenizer")
    train_tiny_minigpt4_tokenizer(tokenizer_dir)
    text_vocab = len(tiny_minigpt4_tokenizer(tokenizer_dir)) - 2
    paths = save_original_minigpt4(
        make_tiny_minigpt4(text_vocab, has_qformer=has_qformer), text_vocab, tokenizer_dir, str(root / "release")
    )
    arguments = ["--model-path", paths["minigpt4"], "--llama-model", paths["llama"], "--vit", paths["vit"]]
    if has_qformer:
        arguments += ["--qformer", paths["qformer"]]
    out = str(root / "converted")
    convert_minigpt4([*arguments, "--vit-layers", str(VIT_LAYERS), "--out", out, "--dtype", "float32"])
    return out


class World:
    def __init__(self, name, root):
        self.name = name
        if name == "instructblip":
            self.folder = make_tiny_hub_folder(str(root / "model"))
        else:
            self.folder = minigpt4_folder(root, has_qformer=name == "minigpt4_vicuna0")
        vg_path, desc_data, pope_data = write_hadpo(root / "hadpo")
        self.hadpo = ["--vg_path", vg_path, "--desc_data_path", desc_data, "--pope_data_path", pope_data]
        self.llava = write_llava(root / "llava")


@pytest.fixture(scope="module", params=FAMILIES)
def world(request, tmp_path_factory):
    return World(request.param, tmp_path_factory.mktemp(f"blip_cli_{request.param}"))


def test_stage1_merge_stage2_merge_load_gives_the_trained_model(world, tmp_path):
    stage1 = tmp_path / "stage1"
    trainer = train_dpo(world.folder, world.hadpo, stage1, "--tune_post_decoder", "True")
    history = trainer.state.log_history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # a new block starts as the identity
    assert history[-2]["loss"] != history[0]["loss"]
    _, base, _, _ = load_pretrained_model(world.folder, device="cpu", dtype=torch.float32)
    head = family_for(base).head_key
    trained_model = trainer.model.policy
    for name, tensor in backbone_state(base).items():  # the frozen backbone, bit for bit
        assert torch.equal(trained_model.state_dict()[name], tensor), name
    stage1_weights = load_file(stage1 / TRAINABLE_WEIGHTS)
    assert stage1_weights and all(name.startswith("post_decoder.") for name in stage1_weights)
    # replace_bin's rewrite of the files into a new folder; InstructBLIP's loses its qformer_tokenizer/ there (see
    # the test below), so it merges whole.
    whole = world.name == "instructblip"
    merged1 = merge(1, world.folder, str(stage1), str(tmp_path / "merged1"), whole=whole)

    stage2 = tmp_path / "stage2"
    train_dpo(merged1, world.hadpo, stage2, "--tune_post_decoder", "True", "--tune_lm_head", "True")
    stage2_weights = load_file(stage2 / TRAINABLE_WEIGHTS)
    assert head in stage2_weights
    merged2 = merge(2, merged1, str(stage2), str(tmp_path / "merged2"))

    _, model, _, _ = load_pretrained_model(merged2, device="cpu", dtype=torch.float32)
    assert family_for(model) is family_for(base) and model.post_decoder is not None
    state = model.state_dict()
    for name, tensor in stage2_weights.items():
        assert torch.equal(state[name], tensor), name
    assert not torch.equal(stage2_weights[head], base.state_dict()[head])
    for name, tensor in backbone_state(base).items():  # everything else is the base, bit for bit
        assert torch.equal(state[name], tensor), name
    from_pretrained = type(model).from_pretrained(merged2)  # transformers opens the merged folder too
    assert torch.equal(from_pretrained.state_dict()[head], stage2_weights[head])


def test_sft_on_llava_format_data_trains_the_block(world, tmp_path, capsys):
    trainer = train_sft(world, tmp_path / "sft")
    printed = capsys.readouterr().out
    assert "samples without an image (kept; the block passes them through): 1" in printed
    if world.name == "instructblip":  # its template holds one question: the multi-turn sample is a counted skip
        assert "the template cannot hold this conversation: 1" in printed
    assert len(trainer.train_dataset) >= 4
    trained = load_file(tmp_path / "sft" / TRAINABLE_WEIGHTS)
    assert any(tensor.abs().sum() > 0 for name, tensor in trained.items() if "down_proj" in name)  # it learned


def test_training_from_the_backbone_cache_equals_training_without_it(world, tmp_path, monkeypatch, capsys):
    """InstructBLIP's entries keyed on the Q-Former's question; the frozen backbone runs without the Q-Former's
    dropout in training too (InstructBLIP, MiniGPT-4's Vicuna version), so the cached states are the run's own."""
    flags = ["--tune_post_decoder", "True", "--save_strategy", "no"]
    plain = train_dpo(world.folder, world.hadpo, tmp_path / "plain", *flags, steps=3)
    cache = ["--backbone_cache", str(tmp_path / "cache")]
    train_dpo(world.folder, world.hadpo, tmp_path / "built", *flags, *cache, steps=3)
    printed = capsys.readouterr().out  # the disk estimate counts the block's rows of each image (the ViT's CLS too)
    estimated = re.search(r"([\d.]+ \w+) per image", printed).group(1)
    assert re.search(r"\d+ images \(([\d.]+ \w+) each\)", printed).group(1) == estimated
    calls = []
    real = type(plain.model.policy).backbone_forward
    monkeypatch.setattr(type(plain.model.policy), "backbone_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    read = train_dpo(world.folder, world.hadpo, tmp_path / "read", *flags, *cache, steps=3)
    assert not calls  # the second run reads the cache
    weights = {name: load_file(tmp_path / name / TRAINABLE_WEIGHTS) for name in ("plain", "built", "read")}
    for name in weights["plain"]:
        cached, without = weights["read"][name], weights["plain"][name]
        torch.testing.assert_close(cached, without, atol=1e-6, rtol=1e-5, msg=named(name))
        assert torch.equal(weights["read"][name], weights["built"][name]), name
    assert plain.state.log_history[0]["loss"] == pytest.approx(read.state.log_history[0]["loss"], abs=1e-6)


def test_replace_bin_into_a_new_folder_keeps_the_familys_sub_folders(tmp_path):
    from post_decoder.families.instructblip.loading import QFORMER_TOKENIZER_FOLDER

    folder = make_tiny_hub_folder(str(tmp_path / "model"))
    _, base, _, _ = load_pretrained_model(folder, device="cpu", dtype=torch.float32)
    assert family_for(base).model_folders == (QFORMER_TOKENIZER_FOLDER,)
    base.attach_post_decoder(PostDecoderConfig())
    trained = tmp_path / "trained"
    write_trainable_checkpoint(str(trained), {n: t for n, t in base.state_dict().items() if "post_decoder" in n}, base)
    merged = merge(1, folder, str(trained), str(tmp_path / "merged"), whole=False)
    _, model, _, _ = load_pretrained_model(merged, device="cpu", dtype=torch.float32)
    assert model.post_decoder is not None
