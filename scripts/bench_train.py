"""Benchmark: one DPO training step, ours against the usual recipe and TRL's DPOTrainer. Same model, same pairs.

    python scripts/bench_train.py --shape tiny                                           # this CPU
    python scripts/bench_train.py --shape 7b --device cuda --pairs 4 --dtype bfloat16    # LLaVA-1.5-7B shape
    python scripts/bench_train.py --shape qwen2_5_vl_tiny --threads 1                    # this CPU
    python scripts/bench_train.py --shape qwen2_5_vl_7b --device cuda --dtype bfloat16   # Qwen2.5-VL-7B shape

Shapes (scripts/bench_models.py): LLaVA-1.5's (`tiny`, `7b`) and Qwen2.5-VL's (`qwen2_5_vl_tiny`, `qwen2_5_vl_7b`:
the published config, a 448x448 picture, 256 image tokens), random weights. Each pair's picture goes through the
family's image processing; the prompt and answers' positions are the family's (Qwen: M-RoPE).
Stages: 1 trains the block, 2 the block and lm_head, `head` lm_head alone (no block).
- ours: the frozen backbone runs once per pair (no grad), the prompt once for both answers (its
  KV cache continued twice), policy head (block + lm_head) and reference head only on answer positions.
- usual (HA-DPO): a separate frozen reference model; policy and reference each run the full
  chosen and the full rejected sequences, with full-vocabulary logits everywhere.
- trl (head stage only): trl's `DPOTrainer.train()` on a plain `LlavaForConditionalGeneration`
  with the same weights and a separate frozen reference. TRL never calls the model's forward (it
  runs `model.base_model`, then `lm_head` in chunks, without full logits), so it cannot train a
  block: at stages 1 and 2 it is reported as not applicable (on the Qwen shapes at every stage: bench_trl.py
  builds a plain LLaVA). What differs from the others' step:
  the batch comes through TRL's dataloader and our collator (scripts/bench_trl.py: the same token
  ids and pixel values, in TRL's layout; TRL's own vision collator would re-tokenize text and
  re-process PIL images); off CUDA/XPU (no Triton) TRL scores every position, prompt included;
  it adds its metrics (entropy, mean logits, top-1 accuracy, rewards) and Trainer's bookkeeping.
  Its optimizer is set as ours: AdamW 1e-5 constant, no clipping, no gradient checkpointing.
Each method runs in its own process (same seed, same weights), so its peak memory is its own.
Prints pairs/s, peak memory, ratios.

    python scripts/bench_train.py --shape tiny --cached --threads 1                      # this CPU
    python scripts/bench_train.py --shape 7b --device cuda --dtype bfloat16 --cached     # LLaVA-1.5-7B shape

`--cached`: instead, one epoch of ours over the same `--epoch-pairs` pairs without and with the backbone cache
(ha_dpo/cache), in one process: pairs/s of each, of the cache's build, and the cache's size per pair and per
image (scripts/bench_cached_epoch.py).
"""

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from bench_models import SHAPES, build_model, picture_size
from PIL import Image

from ha_dpo.objective.dpo_loss import PairLogps, preference_loss
from ha_dpo.objective.full_sequence_logps import full_sequence_logps
from ha_dpo.objective.preference_model import SharedBackbonePreferenceModel
from post_decoder.dtypes import DTYPES, default_dtype
from post_decoder.family import family_for
from post_decoder.images import model_image_inputs

METHODS = ("ours", "usual", "trl")
STAGES = ("1", "2", "head")
NOT_APPLICABLE = {"trl": "n/a at this stage: TRL runs base_model + lm_head itself, it would skip the block"}
NOT_BUILT = {"trl": "n/a: scripts/bench_trl.py builds a plain LLaVA only"}


def pairs_batch(model, tokenizer, image_processor, pairs: int, answer_tokens: int, device, picture: tuple) -> dict:
    """`pairs` prompts (the family's template, one random `picture`-sized (width, height) image each, through the
    family's image processing, a POPE-like question) with random answers of ordinary (not special) tokens."""
    config, family = model.config, family_for(model)
    width, height = picture
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(pairs)]
    image_inputs = model_image_inputs(model, image_processor, images)
    counts = family.image_token_counts(config, image_inputs)
    assert len(set(counts)) == 1, counts  # pictures of one size: one prompt serves every pair
    question = "Describe the image in detail. What objects are there, and where are they?"
    prompt = family.tokenize_prompt(family.question_prompt(question), tokenizer, config, image_tokens=counts[:1])
    generator = torch.Generator().manual_seed(0)
    special = {*tokenizer.all_special_ids, family.image_token_id(config)}
    ordinary = torch.tensor([token for token in range(len(tokenizer)) if token not in special])

    def answers():
        ids = ordinary[torch.randint(len(ordinary), (pairs, answer_tokens), generator=generator)]
        ids[:, -1] = tokenizer.eos_token_id
        return ids.to(device), torch.ones_like(ids, device=device)

    batch = {
        "prompt_input_ids": torch.tensor([prompt] * pairs, device=device),
        "prompt_attention_mask": torch.ones(pairs, len(prompt), dtype=torch.long, device=device),
        **image_inputs,
    }
    batch["chosen_input_ids"], batch["chosen_attention_mask"] = answers()
    batch["rejected_input_ids"], batch["rejected_attention_mask"] = answers()
    return batch


def applies(method: str, stage: str, shape: str = "tiny") -> bool:
    return method != "trl" or (stage == "head" and not shape.startswith("qwen"))


def not_applicable(method: str, stage: str) -> str:
    return NOT_APPLICABLE[method] if stage != "head" else NOT_BUILT[method]


def trained_modules(model, stage: str) -> list:
    return {"1": [model.post_decoder], "2": [model.post_decoder, model.lm_head], "head": [model.lm_head]}[stage]


def step_function(method: str, model, tokenizer, stage: str):
    """Returns a function that runs one training step (forward, backward, optimizer) on a batch."""
    model.requires_grad_(False)
    trained = trained_modules(model, stage)
    for module in trained:
        module.to(torch.float32).requires_grad_(True)
    optimizer = torch.optim.AdamW([p for module in trained for p in module.parameters()], lr=1e-5)
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16)

    if method == "ours":
        preference_model = SharedBackbonePreferenceModel(model, tune_lm_head=model.lm_head in trained)

        def logps(batch):
            return preference_model(**batch)
    else:
        reference_model = copy.deepcopy(model).requires_grad_(False)

        def logps(batch):
            policy, mean_logits = full_sequence_logps(model, batch, tokenizer.pad_token_id)
            with torch.no_grad():
                reference, _ = full_sequence_logps(reference_model, batch, tokenizer.pad_token_id)
            return PairLogps.from_interleaved(policy, reference, mean_logits, batch["chosen_attention_mask"].sum(-1))

    def step(batch) -> dict:
        with autocast:
            loss, metrics = preference_loss(logps(batch), beta=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), **metrics}  # before this step's update

    return step


def run_one(args) -> dict:
    """Time `args.steps` steps of one method after `args.warmup` warm-up steps, in this process."""
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the same weights and pairs in every method's process
    model, tokenizer, image_processor = built_model(args, dtype)
    picture = picture_size(args.shape, model)
    batch = pairs_batch(model, tokenizer, image_processor, args.pairs, args.answer_tokens, args.device, picture)
    if args.method == "trl":
        from bench_trl import time_trl_steps  # trl is needed by this method only

        seconds = time_trl_steps(model, tokenizer, image_processor, batch, args.warmup, args.steps)
    else:
        seconds = time_steps(step_function(args.method, model, tokenizer, args.stage), batch, args.warmup, args.steps)
    cuda = args.device.startswith("cuda")
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "method": args.method,
        "pairs_per_second": args.pairs * args.steps / seconds,
        "peak_gib": peak,
        "prompt_tokens": batch["prompt_input_ids"].shape[1],
        "dtype": str(dtype).replace("torch.", ""),
    }


def built_model(args, dtype):
    return build_model(
        args.shape,
        args.device,
        dtype,
        with_block=args.stage != "head",
        layers=args.layers,
        width_divisor=args.width_divisor,
    )


def time_steps(step, batch, warmup: int, steps: int) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones (CUDA peak memory reset after the warm-up)."""
    cuda = batch["prompt_input_ids"].device.type == "cuda"
    for _ in range(warmup):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny", help="see scripts/bench_models.py")
    parser.add_argument("--layers", type=int, default=None, help="LLM and vision depth (default: the shape's)")
    parser.add_argument(
        "--width-divisor", type=int, default=1, help="Qwen shapes: heads (and widths) divided by this (a short run)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="backbone dtype (default: fp16 on GPU)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per micro-batch")
    parser.add_argument("--answer-tokens", type=int, default=None, help="per answer (default 100 at 7b, 24 at tiny)")
    parser.add_argument(
        "--stage", choices=STAGES, default="1", help="1: block; 2: block + lm_head; head: lm_head alone (no block)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (1 on a busy machine: OpenMP spins otherwise)"
    )
    parser.add_argument("--method", choices=METHODS, help="run one method in this process (used internally)")
    parser.add_argument("--cached", action="store_true", help="an epoch without and with the backbone cache")
    parser.add_argument("--epoch-pairs", type=int, default=64, help="pairs in the --cached epoch")
    args = parser.parse_args()
    args.answer_tokens = args.answer_tokens or (100 if args.shape.endswith("7b") else 24)
    if args.cached and args.shape.startswith("qwen"):
        parser.error("--cached is built for the LLaVA shapes only (scripts/bench_cached_epoch.py)")
    if args.cached:
        print_cached_table(args, run_cached(args))
        return
    if args.method:
        print(json.dumps(run_one(args)))
        return

    results = {}
    for method in filter(lambda method: applies(method, args.stage, args.shape), METHODS):
        command = [sys.executable, __file__, *sys.argv[1:], "--method", method]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])
    print_table(args, results)


def run_cached(args) -> dict:
    """The --cached comparison in this process (see scripts/bench_cached_epoch.py)."""
    from bench_cached_epoch import cached_epoch_comparison

    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer, image_processor = built_model(args, dtype)
    step = step_function("ours", model, tokenizer, args.stage)

    def autocast():  # the step's own autocast: the cache holds what the step's backbone computes
        return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    return {**cached_epoch_comparison(model, tokenizer, image_processor, step, autocast, args), "dtype": dtype}


def print_cached_table(args, result: dict):
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {args.threads or 'all'} threads)"
    )
    print(
        f"shape {args.shape}, {device}, backbone {str(result['dtype']).replace('torch.', '')}, stage {args.stage}, "
        f"{args.pairs} pairs/micro-batch, an epoch of {result['pairs']} pairs (one image each), answers "
        f"{result['answer_tokens']:.0f} tokens on average"
    )
    uncached = result["uncached_pairs_per_second"]
    rows = [
        ("uncached epoch: images decoded, backbone, heads", uncached, ""),
        ("cached epoch: states read from the cache, heads", result["cached_pairs_per_second"],
         f"{result['cached_pairs_per_second'] / uncached:.2f}x"),
        ("cache build (once): backbone, states written", result["build_pairs_per_second"], ""),
    ]  # fmt: skip
    print(f"{'':<52}{'pairs/s':>10}{'vs uncached':>13}")
    for label, pairs_per_second, ratio in rows:
        print(f"{label:<52}{pairs_per_second:>10.2f}{ratio:>13}")
    print(
        f"cache on disk ({result['states_dtype']}): {result['bytes_per_pair'] / 2**10:.1f} KiB per pair, "
        f"{result['bytes_per_image'] / 2**10:.1f} KiB per image"
    )


def print_table(args, results: dict):
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({os.cpu_count()} cores, {args.threads or 'all'} threads)"
    )
    memory = "peak GPU memory (GiB)" if args.device.startswith("cuda") else "peak RSS (GiB)"
    ours = results["ours"]
    print(
        f"shape {args.shape}, {device}, backbone {ours['dtype']}, stage {args.stage}, {args.pairs} pairs/micro-batch, "
        f"prompt {ours['prompt_tokens']} tokens, answers {args.answer_tokens} tokens, {args.steps} timed steps"
    )
    print(f"{'method':<52}{'pairs/s':>10}{memory:>24}{'vs usual':>10}{'ours / it':>11}")
    labels = {
        "ours": "ours: shared backbone, prompt once, heads on answers",
        "usual": "usual: separate reference, full sequences",
        "trl": "trl: DPOTrainer, separate reference, lm_head only",
    }
    for method in METHODS:
        if method not in results:
            print(f"{labels[method]:<52}  {not_applicable(method, args.stage)}")
            continue
        row = results[method]
        speedup = row["pairs_per_second"] / results["usual"]["pairs_per_second"]
        ours_ratio = ours["pairs_per_second"] / row["pairs_per_second"]
        print(
            f"{labels[method]:<52}{row['pairs_per_second']:>10.2f}{row['peak_gib']:>24.2f}{speedup:>9.2f}x{ours_ratio:>10.2f}x"
        )


if __name__ == "__main__":
    main()
