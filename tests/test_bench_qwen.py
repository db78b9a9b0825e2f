"""The benchmarks' Qwen2.5-VL shapes: `qwen2_5_vl_7b` is Qwen/Qwen2.5-VL-7B-Instruct's published config (checked
value by value, its size on meta tensors, 256 image tokens for a 448x448 picture); its code path (the published
processor and vision layout, 152,064 vocabulary rows, M-RoPE with its sections) runs end to end through
bench_pope.py and bench_train.py at a reduced depth and width; on the bench's pairs, ours and the usual recipe
score the same log-probs (the benchmark times equal work). The full 7B shape is not run here (no GPU, no memory)."""

import copy
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

from bench_models import build_model, picture_size, qwen_config  # noqa: E402
from bench_train import pairs_batch, step_function  # noqa: E402

from post_decoder.families.qwen_vl import QWEN2_5_VL  # noqa: E402
from post_decoder.families.qwen_vl.loading import load_image_processor  # noqa: E402
from post_decoder.family import family_for  # noqa: E402

REDUCED_7B = ["--shape", "qwen2_5_vl_7b", "--layers", "2", "--width-divisor", "16"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("qwen_7b"))
    config, tokenizer = qwen_config("qwen2_5_vl_7b", folder, layers=None, width_divisor=1)
    return config, tokenizer, folder


def test_the_7b_shape_is_qwen2_5_vl_7b_instructs_published_config(published):
    config, tokenizer, _ = published
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        3584,
        28,
        28,
        4,
    )
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (18944, 152064, 128000)
    assert text.rope_parameters["rope_theta"] == 1000000.0 and text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert text.rms_norm_eps == 1e-6 and text.hidden_act == "silu" and not config.tie_word_embeddings
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (32, 1280, 3420, 16)
    assert (vision.out_hidden_size, vision.patch_size, vision.spatial_merge_size, vision.window_size) == (
        3584,
        14,
        2,
        112,
    )
    assert vision.fullatt_block_indexes == [7, 15, 23, 31] and vision.tokens_per_second == 2
    # The special tokens are the small tokenizer's, under Qwen's names.
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") < text.vocab_size
    assert tokenizer.eos_token == "<|im_end|>" and text.eos_token_id == tokenizer.eos_token_id


def test_the_7b_shape_has_the_published_size_and_a_448_picture_is_256_image_tokens(published):
    config, _, folder = published
    with torch.device("meta"):  # no memory: sizes only
        model = QWEN2_5_VL.model_class(QWEN2_5_VL.with_block(config))
    count = sum(parameter.numel() for parameter in model.parameters())
    assert round(count / 1e9, 2) == 8.29  # the hub's model card: 8.29B parameters
    processor = load_image_processor(folder)
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (3136, 12845056)
    picture = Image.fromarray(np.zeros((448, 448, 3), dtype=np.uint8))
    inputs = QWEN2_5_VL.image_inputs([picture], processor)
    assert inputs["image_grid_thw"].tolist() == [[1, 32, 32]]
    assert QWEN2_5_VL.image_token_counts(config, inputs) == [256]
    assert picture_size("qwen2_5_vl_7b", None) == (448, 448)


def test_a_reduced_7b_shape_keeps_head_sizes_and_the_vocabulary():
    torch.manual_seed(0)
    model, _, _ = build_model("qwen2_5_vl_7b", "cpu", torch.float32, True, layers=2, width_divisor=16)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers) == (
        128,
        1,
        1,
        2,
    )
    assert text.vocab_size == 152064 and model.lm_head.weight.shape == (152064, 128)
    assert (vision.hidden_size // vision.num_heads, vision.depth, vision.fullatt_block_indexes) == (80, 2, [1])
    assert vision.out_hidden_size == 128 and model.post_decoder is not None


def run_script(name: str, *flags) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.join(SCRIPTS, name), *flags]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_bench_pope_runs_the_7b_code_path_at_reduced_size():
    flags = ["--num-images", "2", "--baseline-questions", "4", "--max-new-tokens", "3", "--batch-size", "4"]
    output = run_script("bench_pope.py", *REDUCED_7B, *flags, "--device", "cpu")
    assert "shape qwen2_5_vl_7b" in output and "2 images" in output
    methods = r"^(?:per-question generate, batch 1|ours: prefix cache \+ batches)"
    rates = re.findall(methods + r"\s+(\d+)\s+[\d.]+\s+([\d.]+)", output, re.MULTILINE)  # questions, q/s
    assert [int(count) for count, _ in rates] == [4, 2 * 3 * 6] and all(float(rate) > 0 for _, rate in rates)
    # Prefix-cached batches answer as per-question generate (fp32, random weights: greedy, no EOS ban needed).
    assert "identical answers on the 4 questions both ways answered: 4 (100.0%)" in output


@pytest.mark.slow
def test_bench_train_runs_the_7b_code_path_at_reduced_size():
    flags = ["--pairs", "1", "--answer-tokens", "4", "--steps", "1", "--warmup", "0", "--threads", "1"]
    output = run_script("bench_train.py", *REDUCED_7B, *flags, "--device", "cpu")
    assert "shape qwen2_5_vl_7b" in output
    prompt = int(re.search(r"prompt (\d+) tokens", output).group(1))
    assert prompt > 256  # the picture's 256 image tokens, the template and the question
    for label in ("ours: shared backbone", "usual: separate reference"):
        row = next(line for line in output.splitlines() if line.startswith(label))
        assert float(row.split()[-4]) > 0, row  # pairs/s
    assert re.search(r"^trl: .*n/a", output, re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_bench():
    torch.manual_seed(0)
    model, tokenizer, processor = build_model("qwen2_5_vl_tiny", "cpu", torch.float32, with_block=True)
    picture = picture_size("qwen2_5_vl_tiny", model)
    return model, tokenizer, pairs_batch(model, tokenizer, processor, 3, 5, "cpu", picture)


def test_the_bench_pairs_are_qwen_prompts_with_their_images_and_ordinary_answers(tiny_bench):
    model, tokenizer, batch = tiny_bench
    family = family_for(model)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 3  # 32x32 pixels: 16 image tokens each
    prompt = batch["prompt_input_ids"][0]
    assert (prompt == model.config.image_token_id).sum() == 16
    assert tokenizer.decode(prompt).startswith("<|im_start|>system") and family.name == "Qwen2.5-VL"
    answers = torch.cat([batch["chosen_input_ids"][:, :-1], batch["rejected_input_ids"][:, :-1]])
    assert not set(answers.flatten().tolist()) & set(tokenizer.all_special_ids)
    assert (batch["chosen_input_ids"][:, -1] == tokenizer.eos_token_id).all()


def test_ours_and_the_usual_recipe_score_the_same_pairs_alike(tiny_bench):
    model, tokenizer, batch = tiny_bench
    ours = step_function("ours", copy.deepcopy(model), tokenizer, "1")(batch)
    usual = step_function("usual", copy.deepcopy(model), tokenizer, "1")(batch)
    # Each method's first loss: policy == reference; the metrics are from before the step's update.
    assert ours["loss"].item() == pytest.approx(np.log(2), abs=1e-6)
    assert usual["loss"].item() == pytest.approx(np.log(2), abs=1e-6)
    for name in ("logps/chosen", "logps/rejected"):
        assert usual[name].item() == pytest.approx(ours[name].item(), rel=1e-3), name
