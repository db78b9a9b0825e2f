"""Benchmark: POPE answering with per-image prefix caching (ours) against plain `generate`, one
question at a time with batch size 1 (the HA-DPO / LLaVA scripts' way). Same model, same questions.

    python scripts/bench_pope.py --shape tiny                                   # this CPU, seconds
    python scripts/bench_pope.py --shape 7b --device cuda --dtype bfloat16     # LLaVA-1.5-7B shape, random weights
    python scripts/bench_pope.py --shape qwen2_5_vl_tiny                        # this CPU
    python scripts/bench_pope.py --shape qwen2_5_vl_7b --device cuda --dtype bfloat16   # Qwen2.5-VL-7B shape

Shapes: scripts/bench_models.py (Qwen2.5-VL-7B's: its published config, a 448x448 picture, 256 image tokens).

Questions: the official POPE sets (all three, 9,000 questions on 500 images) when --pope_path is
given, else generated ones of the same form; random images (the shape's picture size) stand in for
COCO. The per-question way is timed on a --baseline-questions subset (it is slow) and compared by questions per second.
Random weights rarely emit EOS, so both ways decode --max-new-tokens tokens for every answer.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from bench_models import SHAPES, build_model, picture_size
from PIL import Image

from eval.answering import PrefixCachedAnswerer
from eval.pope_eval_post import load_question_sets, pending_by_image
from post_decoder.dtypes import DTYPES, default_dtype
from post_decoder.family import conv_modes, family_for


def generated_questions(num_images: int) -> dict[str, list[dict]]:
    objects = ["dog", "cat", "car", "apple", "person", "chair", "bottle", "cup", "bird", "umbrella", "tv", "bed"]
    sets = {}
    for offset, name in enumerate(("random", "popular", "adversarial")):
        questions = []
        for image in range(num_images):
            for k in range(6):
                text = f"Is there a {objects[(image + k * (offset + 1)) % len(objects)]} in the image?"
                questions.append(
                    {"question_id": len(questions) + 1, "image": f"{image}.jpg", "text": text, "label": "yes"}
                )
        sets[name] = questions
    return sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="tiny", help="see scripts/bench_models.py")
    parser.add_argument("--layers", type=int, default=None, help="LLM and vision depth (default: the shape's)")
    parser.add_argument(
        "--width-divisor", type=int, default=1, help="Qwen shapes: heads (and widths) divided by this (a short run)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: fp16 on GPU")
    parser.add_argument("--pope_path", help="folder of the official coco_pope_*.json (else generated questions)")
    parser.add_argument("--num-images", type=int, default=500, help="for generated questions")
    parser.add_argument("--max-images", type=int, default=None, help="cut the run to this many images")
    parser.add_argument("--baseline-questions", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--conv-mode", choices=conv_modes(), help="the prompt's template (default: the family's own)")
    parser.add_argument("--no-block", action="store_true", help="benchmark the plain model (no block)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(args.device)

    model, tokenizer, processor = build_model(
        args.shape, args.device, dtype, not args.no_block, layers=args.layers, width_divisor=args.width_divisor
    )
    sets = load_question_sets(args.pope_path, "all") if args.pope_path else generated_questions(args.num_images)
    by_image = pending_by_image(sets, done={})
    images = sorted(by_image)[: args.max_images]
    width, height = picture_size(args.shape, model)
    rng = np.random.default_rng(0)
    pictures = {name: Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for name in images}
    family = family_for(model)
    total_questions = sum(len(by_image[name]) for name in images)
    answerer = PrefixCachedAnswerer(
        model, tokenizer, processor, args.max_new_tokens, args.batch_size, conv_mode=args.conv_mode
    )

    def synchronize():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    answerer.answer(pictures[images[0]], ["Is there a dog in the image?"])  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    start = time.perf_counter()
    ours_answers = {}
    for name in images:
        texts = list(dict.fromkeys(question["text"] for _, question in by_image[name]))
        ours_answers.update(
            {(name, text): answer for text, answer in zip(texts, answerer.answer(pictures[name], texts))}
        )
    synchronize()
    ours_seconds = time.perf_counter() - start
    ours_peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")

    baseline = [(name, question["text"]) for name in images for _, question in by_image[name]][
        : args.baseline_questions
    ]
    synchronize()
    start = time.perf_counter()
    agreeing = 0
    for name, text in baseline:  # the image processed for every question, as the per-question scripts do
        image_inputs = answerer.image_inputs(pictures[name])
        counts = family.image_token_counts(model.config, image_inputs)
        input_ids = torch.tensor([answerer.prompt_ids(text, image_tokens=counts)], device=model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                **image_inputs,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
        agreeing += answer == ours_answers[(name, text)]
    synchronize()
    baseline_seconds = time.perf_counter() - start

    ours_rate, baseline_rate = total_questions / ours_seconds, len(baseline) / baseline_seconds
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"shape {args.shape}, {device_name}, {dtype}, block: {not args.no_block}, {len(images)} images, "
        f"max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}"
    )
    print(f"{'method':<34}{'questions':>10}{'seconds':>10}{'questions/s':>13}{'all 9,000 (s)':>15}{'speed-up':>10}")
    for method, count, seconds, rate in (
        ("per-question generate, batch 1", len(baseline), baseline_seconds, baseline_rate),
        ("ours: prefix cache + batches", total_questions, ours_seconds, ours_rate),
    ):
        print(f"{method:<34}{count:>10}{seconds:>10.2f}{rate:>13.2f}{9000 / rate:>15.1f}{rate / baseline_rate:>9.1f}x")
    share = 100 * agreeing / len(baseline)
    print(f"identical answers on the {len(baseline)} questions both ways answered: {agreeing} ({share:.1f}%)")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory (ours): {ours_peak:.1f} GiB")


if __name__ == "__main__":
    main()
