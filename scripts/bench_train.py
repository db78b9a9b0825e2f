"""Benchmark: one DPO training step of the block, ours against the usual recipe. Same model, same pairs.

    python scripts/bench_train.py --shape tiny                          # this CPU
    python scripts/bench_train.py --shape 7b --device cuda --pairs 4    # LLaVA-1.5-7B shape, random bf16 weights

- ours: the frozen backbone runs once per pair (no grad), the prompt once for both answers (its
  KV cache continued twice), policy head (block + lm_head) and reference head only on answer positions.
- usual (HA-DPO, TRL): a separate frozen reference model; policy and reference each run the full
  chosen and the full rejected sequences, with full-vocabulary logits everywhere.
Each method runs in its own process, so its peak memory is its own. Prints pairs/s, peak memory, ratios.
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

import torch

from bench_models import build_model
from ha_dpo.dpo_loss import PairLogps, preference_loss
from ha_dpo.full_sequence_logps import full_sequence_logps
from ha_dpo.preference_model import SharedBackbonePreferenceModel
from post_decoder.conversation import question_prompt, tokenize_with_image

METHODS = ("ours", "usual")


def pairs_batch(model, tokenizer, pairs: int, answer_tokens: int, device) -> dict:
    """`pairs` prompts (the LLaVA template, the image tokens, a POPE-like question) with random answers."""
    config = model.config
    prompt = tokenize_with_image(
        question_prompt("Describe the image in detail. What objects are there, and where are they?"),
        tokenizer, config.image_token_id, config.image_seq_length,
    )
    generator = torch.Generator().manual_seed(0)
    text_vocab = config.image_token_id

    def answers():
        ids = torch.randint(3, text_vocab, (pairs, answer_tokens), generator=generator)
        ids[:, -1] = tokenizer.eos_token_id
        return ids.to(device), torch.ones_like(ids, device=device)

    batch = {
        "prompt_input_ids": torch.tensor([prompt] * pairs, device=device),
        "prompt_attention_mask": torch.ones(pairs, len(prompt), dtype=torch.long, device=device),
        "pixel_values": torch.randn(pairs, 3, config.vision_config.image_size, config.vision_config.image_size, generator=generator),
    }
    batch["pixel_values"] = batch["pixel_values"].to(device, model.dtype)
    batch["chosen_input_ids"], batch["chosen_attention_mask"] = answers()
    batch["rejected_input_ids"], batch["rejected_attention_mask"] = answers()
    return batch


def step_function(method: str, model, tokenizer, stage: int):
    """Returns a function that runs one training step (forward, backward, optimizer) on a batch."""
    model.requires_grad_(False)
    trained = [model.post_decoder] + ([model.lm_head] if stage == 2 else [])
    for module in trained:
        module.to(torch.float32).requires_grad_(True)
    optimizer = torch.optim.AdamW([p for module in trained for p in module.parameters()], lr=1e-5)
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16)

    if method == "ours":
        preference_model = SharedBackbonePreferenceModel(model, tune_lm_head=stage == 2)

        def logps(batch):
            return preference_model(**batch)
    else:
        reference_model = copy.deepcopy(model).requires_grad_(False)

        def logps(batch):
            policy, mean_logits = full_sequence_logps(model, batch, tokenizer.pad_token_id)
            with torch.no_grad():
                reference, _ = full_sequence_logps(reference_model, batch, tokenizer.pad_token_id)
            return PairLogps.from_interleaved(policy, reference, mean_logits, batch["chosen_attention_mask"].sum(-1))

    def step(batch):
        with autocast:
            loss, _ = preference_loss(logps(batch), beta=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_one(args) -> dict:
    """Time `args.steps` steps of one method after `args.warmup` warm-up steps, in this process."""
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, _ = build_model(args.shape, args.device, dtype, with_block=True)
    batch = pairs_batch(model, tokenizer, args.pairs, args.answer_tokens, args.device)
    step = step_function(args.method, model, tokenizer, args.stage)
    cuda = args.device.startswith("cuda")
    for _ in range(args.warmup):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": args.method, "pairs_per_second": args.pairs * args.steps / seconds, "peak_gib": peak,
            "prompt_tokens": batch["prompt_input_ids"].shape[1], "dtype": str(dtype).replace("torch.", "")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="backbone dtype (default: bf16 on GPU)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per micro-batch")
    parser.add_argument("--answer-tokens", type=int, default=None, help="per answer (default 100 at 7b, 24 at tiny)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1: block; 2: block + lm_head")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a busy machine: OpenMP spins otherwise)")
    parser.add_argument("--method", choices=METHODS, help="run one method in this process (used internally)")
    args = parser.parse_args()
    args.answer_tokens = args.answer_tokens or (100 if args.shape == "7b" else 24)
    if args.method:
        print(json.dumps(run_one(args)))
        return

    results = {}
    for method in METHODS:
        command = [sys.executable, __file__, *sys.argv[1:], "--method", method]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(output.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores, {args.threads or 'all'} threads)"
    memory = "peak GPU memory (GiB)" if args.device.startswith("cuda") else "peak RSS (GiB)"
    print(f"shape {args.shape}, {device}, backbone {results['ours']['dtype']}, stage {args.stage}, {args.pairs} pairs/micro-batch, "
          f"prompt {results['ours']['prompt_tokens']} tokens, answers {args.answer_tokens} tokens, {args.steps} timed steps")
    print(f"{'method':<52}{'pairs/s':>10}{memory:>24}{'speed-up':>10}")
    labels = {"ours": "ours: shared backbone, prompt once, heads on answers", "usual": "usual: separate reference, full sequences"}
    for method in METHODS:
        row = results[method]
        speedup = row["pairs_per_second"] / results["usual"]["pairs_per_second"]
        print(f"{labels[method]:<52}{row['pairs_per_second']:>10.2f}{row['peak_gib']:>24.2f}{speedup:>9.2f}x")


if __name__ == "__main__":
    main()
