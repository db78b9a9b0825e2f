"""Benchmark: CHAIR descriptions decoded many images at once (eval/description_generation.py, what
eval/chair_eval_post.py runs) against plain `generate` one image at a time (batch size 1, the way
OPERA's and HA-DPO's scripts describe images). Same model, same prompt, same images.

    python scripts/bench_chair.py --shape tiny --threads 1                       # this CPU
    python scripts/bench_chair.py --shape 7b --device cuda --dtype float16       # LLaVA-1.5-7B shape, random weights

Random images stand in for COCO. Every description runs to --max-new-tokens in both ways (</s> is not
a stop: 500 images x 512 new tokens is the work measured). Random weights emit </s> at random steps, and
a batch waits for its longest row while one image alone stops at once, so with --stop-at-eos the ratio
says more about the random stops than about decoding. The per-image way is timed on the first
--baseline-images images (it is slow) and compared by images per second; its descriptions are compared
with the batched ones.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from bench_models import build_model
from PIL import Image

from eval.description_generation import DESCRIPTION_PROMPT, BatchedDescriber
from post_decoder.dtypes import DTYPES, default_dtype
from post_decoder.family import conv_modes, default_conv_mode, family_for
from post_decoder.images import pixel_values


def per_image(describer, picture) -> str:
    """Plain `generate` on one image's whole prompt."""
    model, tokenizer = describer.model, describer.tokenizer
    family = family_for(model)
    prompt = family.question_prompt(describer.prompt, conv_mode=describer.conv_mode)
    input_ids = torch.tensor([family.tokenize_prompt(prompt, tokenizer, model.config)], device=model.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            pixel_values=pixel_values(model, describer.image_processor, [picture]),
            max_new_tokens=describer.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


class CountedTokens:
    """Counts the new tokens `model.generate` decodes for each row: up to its </s> when </s> stops it."""

    def __init__(self, model):
        self.model, self.original, self.tokens = model, model.generate, 0

    def __call__(self, *args, **kwargs):
        output = self.original(*args, **kwargs)
        eos = self.model.generation_config.eos_token_id
        for row in output[:, kwargs["input_ids"].shape[1] :].tolist():
            self.tokens += row.index(eos) + 1 if eos is not None and eos in row else len(row)
        return output

    def __enter__(self):
        self.model.generate = self
        return self

    def __exit__(self, *exc):
        del self.model.generate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("tiny", "7b"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: float16 on GPU")
    parser.add_argument("--images", type=int, default=500, help="images described the batched way")
    parser.add_argument("--baseline-images", type=int, default=16, help="of them, described one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--conv-mode", choices=conv_modes(), default=default_conv_mode())
    parser.add_argument("--no-block", action="store_true", help="benchmark the plain LLaVA")
    parser.add_argument("--stop-at-eos", action="store_true", help="let </s> end a description")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)
    cuda = args.device.startswith("cuda")

    torch.manual_seed(0)  # the random weights: the same model, and the same descriptions, every run
    model, tokenizer, processor = build_model(args.shape, args.device, dtype, not args.no_block)
    if not args.stop_at_eos:
        model.generation_config.eos_token_id = None
    describer = BatchedDescriber(
        model, tokenizer, processor, DESCRIPTION_PROMPT, args.max_new_tokens, args.batch_size, args.conv_mode
    )
    size = model.config.vision_config.image_size
    rng = np.random.default_rng(0)
    shape = (size, size + 37, 3)
    pictures = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(args.images)]

    def timed(work):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = work()
        if cuda:
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    BatchedDescriber(model, tokenizer, processor, DESCRIPTION_PROMPT, 4, 2, args.conv_mode).describe(pictures[:2])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with CountedTokens(model) as counted:
        batched, batched_seconds = timed(lambda: describer.describe(pictures))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    baseline = pictures[: args.baseline_images]
    one_by_one, baseline_seconds = timed(lambda: [per_image(describer, picture) for picture in baseline])
    agreeing = sum(a == b for a, b in zip(one_by_one, batched))

    batched_rate, baseline_rate = len(pictures) / batched_seconds, len(baseline) / baseline_seconds
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"shape {args.shape}, {device}, {dtype}, block: {not args.no_block}, max_new_tokens {args.max_new_tokens} "
        f"({'stopping' if args.stop_at_eos else 'not stopping'} at </s>), "
        f"batch size {args.batch_size}, {counted.tokens / len(pictures):.1f} new tokens per description (batched)"
    )
    print(f"{'method':<32}{'images':>8}{'seconds':>10}{'images/s':>10}{'500 images (s)':>16}{'speed-up':>10}")
    for method, count, seconds, rate in (
        ("per-image generate, batch 1", len(baseline), baseline_seconds, baseline_rate),
        (f"batched, {args.batch_size} images a call", len(pictures), batched_seconds, batched_rate),
    ):
        print(f"{method:<32}{count:>8}{seconds:>10.2f}{rate:>10.3f}{500 / rate:>16.1f}{rate / baseline_rate:>9.1f}x")
    print(f"identical descriptions on the {len(baseline)} images both ways described: {agreeing}")
    if cuda:
        print(f"peak GPU memory (batched): {peak:.1f} GiB")


if __name__ == "__main__":
    main()
