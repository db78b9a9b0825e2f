"""The steps `bench_gpu.py` runs, each in a process of its own: `step(emit, settings, ...)` builds its model,
measures, and hands each result to `emit` as soon as it has it (a later failure keeps the earlier ones).

`settings` is bench_gpu's dict: shape, layers, device, dtype, threads, tokenizer, pope_path, pairs, ...
A check outside its stated tolerance emits its numbers, then raises `CheckFailed`.
"""

import importlib.metadata
import importlib.util
import os
import platform
import resource
import time

import numpy as np
import torch
import transformers
from bench_models import build_model, picture_size
from PIL import Image

from post_decoder.dtypes import DTYPES

OPTIONAL_PACKAGES = ("trl", "deepspeed", "accelerate", "peft", "gradio", "wandb")
# Shared backbone vs two full models, |difference of the sequence log-probs| / answer tokens (nats): in fp32
# they must agree; in bf16 their different shapes (prompt once + KV cache vs whole sequences) round differently,
# so the shared path must stay within twice the usual recipe's own bf16 error (two-model bf16 vs fp32).
FP32_LOGPS_TOLERANCE = 1e-3
BF16_LOGPS_TOLERANCE_FLOOR = 0.05
GENERATION_MIN_IDENTICAL = 0.99  # prefix-cached vs per-question `generate` answers (float32)
QWEN_SHAPES = {"7b": "qwen2_5_vl_7b", "tiny": "qwen2_5_vl_tiny"}  # the Qwen2.5-VL step's shape, by the run's
QWEN_POPE = {"questions": 1800, "baseline_questions": 50}  # at most: the step's POPE part fits in its budget


class CheckFailed(RuntimeError):
    """An exactness check measured outside its tolerance (its numbers were emitted first)."""


def package_version(name: str):
    """The installed version of `name`, or None when it cannot be imported (not installed)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment(emit, settings):
    """Versions and the device; fails when the device asked for is not there."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    versions.update({name: package_version(name) for name in OPTIONAL_PACKAGES})
    device = settings["device"]
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available to torch {torch.__version__}")
        if (torch.device(device).index or 0) >= torch.cuda.device_count():
            raise RuntimeError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
        properties = torch.cuda.get_device_properties(device)
        description = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "capability": f"{properties.major}.{properties.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        description = {"name": cpu_name(), "cores": os.cpu_count()}
        description["threads"] = settings["threads"] or torch.get_num_threads()
    emit({"versions": versions, "device": {"type": device, **description}})


def cpu_name() -> str:
    """The processor's model name (Linux), else its architecture."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _prepare(settings, dtype=None):
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    torch.manual_seed(0)  # the same weights and pairs in every step's process
    return DTYPES[dtype or settings["dtype"]]


def _exact_float32():
    """fp32 that is fp32 on CUDA too (no TF32 in matrix products or convolutions): the exactness checks' reference."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _build(settings, dtype, with_block=True):
    return build_model(
        settings["shape"],
        settings["device"],
        dtype,
        with_block,
        layers=settings["layers"],
        tokenizer_path=settings["tokenizer"],
    )


def _pictures(settings, model, names) -> dict:
    """Random images standing in for COCO, the shape's size (LLaVA's: wider than tall, so 'pad' has work to do)."""
    width, height = picture_size(settings["shape"], model)
    rng = np.random.default_rng(0)
    return {name: Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for name in names}


def _peak_gib(device: str) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS (mostly torch itself)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(emit, settings, stage: str, method: str):
    """bench_train.py's step for one method at one stage, at each of settings["pairs"] pairs per micro-batch."""
    from bench_train import pairs_batch, step_function, time_steps

    dtype = _prepare(settings)
    model, tokenizer, image_processor = _build(settings, dtype, with_block=stage != "head")
    device, step = settings["device"], None
    for pairs in settings["pairs"]:
        picture = picture_size(settings["shape"], model)
        batch = pairs_batch(model, tokenizer, image_processor, pairs, settings["answer_tokens"], device, picture)
        try:
            if method == "trl":
                from bench_trl import time_trl_steps  # trl is needed by this method only

                seconds = time_trl_steps(
                    model, tokenizer, image_processor, batch, settings["warmup"], settings["steps"]
                )
            else:
                step = step or step_function(method, model, tokenizer, stage)
                seconds = time_steps(step, batch, settings["warmup"], settings["steps"])
        except torch.cuda.OutOfMemoryError:  # in every torch setup.py allows (torch.OutOfMemoryError: 2.5 on)
            del batch
            torch.cuda.empty_cache()
            emit({"pairs": pairs, "error": "out of GPU memory"})
            continue
        emit(
            {
                "pairs": pairs,
                "pairs_per_second": pairs * settings["steps"] / seconds,
                "seconds_per_step": seconds / settings["steps"],
                "peak_gib": _peak_gib(device),
                "prompt_tokens": batch["prompt_input_ids"].shape[1],
                "answer_tokens": settings["answer_tokens"],
            }
        )


def question_work(settings) -> tuple[list[tuple[str, str]], str]:
    """[(image, question text)] in image order, cut to settings["questions"], and where they came from."""
    from bench_pope import generated_questions

    from eval.pope_eval_post import load_question_sets, pending_by_image

    if settings["pope_path"]:
        sets, source = load_question_sets(settings["pope_path"], "all"), f"official POPE ({settings['pope_path']})"
    else:
        sets, source = generated_questions(500), "synthetic (official POPE files not found): 3 x 500 images x 6"
    by_image = pending_by_image(sets, done={})
    work = [(image, question["text"]) for image in sorted(by_image) for _, question in by_image[image]]
    return work[: settings["questions"]], source


def by_image(work) -> dict[str, list[str]]:
    """image -> its distinct question texts (a text asked in several POPE sets is answered once)."""
    grouped: dict[str, dict] = {}
    for image, text in work:
        grouped.setdefault(image, {})[text] = None  # a dict keeps the first-asked order
    return {image: list(texts) for image, texts in grouped.items()}


def per_question_answer(model, answerer, tokenizer, picture, text: str, max_new_tokens: int) -> str:
    """HA-DPO's / LLaVA's way: `generate` on the whole prompt, one question, batch size 1 (the image processed
    for it)."""
    image_inputs = answerer.image_inputs(picture)
    counts = answerer.family.image_token_counts(model.config, image_inputs)
    input_ids = torch.tensor([answerer.prompt_ids(text, image_tokens=counts)], device=model.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            **image_inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


def _answerer(settings, dtype):
    from eval.answering import PrefixCachedAnswerer

    model, tokenizer, image_processor = _build(settings, dtype)
    answerer = PrefixCachedAnswerer(
        model, tokenizer, image_processor, settings["max_new_tokens"], settings["batch_size"]
    )
    return model, tokenizer, answerer


def pope(emit, settings):
    """POPE answering: ours (prefix cache + batches) on every question, per-question `generate` on a subset."""
    dtype, device = _prepare(settings), settings["device"]
    model, tokenizer, answerer = _answerer(settings, dtype)
    work, source = question_work(settings)
    questions_by_image = by_image(work)
    pictures = _pictures(settings, model, questions_by_image)
    answerer.answer(next(iter(pictures.values())), ["Is there a dog in the image?"])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _synchronize(device)
    start = time.perf_counter()
    ours = {}
    for image, questions in questions_by_image.items():
        ours.update(
            {(image, text): answer for text, answer in zip(questions, answerer.answer(pictures[image], questions))}
        )
    _synchronize(device)
    ours_seconds = time.perf_counter() - start
    rate = len(work) / ours_seconds
    emit(  # before the slow per-question way: kept if that runs out of time
        {
            "part": "ours",
            "questions": len(work),
            "distinct_prompts": len(ours),
            "images": len(questions_by_image),
            "question_source": source,
            "seconds": ours_seconds,
            "questions_per_second": rate,
            "seconds_for_9000": 9000 / rate,
            "peak_gib": _peak_gib(device),
            "max_new_tokens": settings["max_new_tokens"],
            "batch_size": settings["batch_size"],
        }
    )
    baseline = work[: settings["baseline_questions"]]
    start = time.perf_counter()
    identical = sum(
        per_question_answer(model, answerer, tokenizer, pictures[image], text, settings["max_new_tokens"])
        == ours[(image, text)]
        for image, text in baseline
    )
    _synchronize(device)
    baseline_seconds = time.perf_counter() - start
    emit(
        {
            "part": "per-question generate",
            "baseline_questions": len(baseline),
            "baseline_seconds": baseline_seconds,
            "baseline_questions_per_second": len(baseline) / baseline_seconds,
            "speedup": rate / (len(baseline) / baseline_seconds),
            "identical_answers": identical,
        }
    )


def _both_logps(model, batch, pad_id, autocast: bool):
    """Per answer (chosen_0, rejected_0, ...): the policy's sequence log-prob the shared way and the two-model way."""
    from ha_dpo.objective.full_sequence_logps import full_sequence_logps
    from ha_dpo.objective.pair_logps import ReferenceHead, shared_pair_logps

    reference = ReferenceHead.snapshot(model, copy_lm_head=False)
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=autocast):
        shared = shared_pair_logps(model, reference, batch)
        full, _ = full_sequence_logps(model, batch, pad_id)
    return torch.stack([shared.policy_chosen, shared.policy_rejected], dim=1).flatten().float(), full.float()


def exact_logps(emit, settings):
    """Shared-backbone vs two-model sequence log-probs, in float32 and then in bfloat16 (the training
    benchmark's setting: bf16 backbone, fp32 block under bf16 autocast), each within its tolerance (above)."""
    from bench_train import pairs_batch

    _prepare(settings)
    _exact_float32()
    model, tokenizer, image_processor = _build(settings, torch.float32)
    picture = picture_size(settings["shape"], model)
    batch = pairs_batch(
        model,
        tokenizer,
        image_processor,
        settings["exact_pairs"],
        settings["answer_tokens"],
        settings["device"],
        picture,
    )
    tokens = settings["answer_tokens"]
    shared32, full32 = _both_logps(model, batch, tokenizer.pad_token_id, autocast=False)
    model.to(torch.bfloat16).post_decoder.to(torch.float32)
    batch = {name: value.to(torch.bfloat16) if value.is_floating_point() else value for name, value in batch.items()}
    shared16, full16 = _both_logps(model, batch, tokenizer.pad_token_id, autocast=True)

    def per_token(a, b):
        return (a - b).abs().max().item() / tokens

    bf16_error = {"shared": per_token(shared16, full32), "two_model": per_token(full16, full32)}
    differences = {"float32": per_token(shared32, full32), "bfloat16": per_token(shared16, full16)}
    tolerances = {"float32": FP32_LOGPS_TOLERANCE}
    tolerances["bfloat16"] = max(BF16_LOGPS_TOLERANCE_FLOOR, 2 * bf16_error["two_model"])
    emit(
        {
            "answers": len(full32),
            "answer_tokens": tokens,
            "max_diff_per_token": differences,
            "tolerance_per_token": tolerances,
            "tolerance_rule": f"fp32: {FP32_LOGPS_TOLERANCE}; bf16: twice the two-model path's own bf16 error "
            f"(two-model bf16 vs fp32), at least {BF16_LOGPS_TOLERANCE_FLOOR}",
            "bf16_vs_fp32_per_token": bf16_error,
            "mean_logp_per_token": full32.mean().item() / tokens,
        }
    )
    outside = [
        f"{dtype} {diff:.3g} > {tolerances[dtype]:.3g}"
        for dtype, diff in differences.items()
        if diff > tolerances[dtype]
    ]
    if outside:
        raise CheckFailed(f"shared vs two-model log-probs outside tolerance (nats per token): {', '.join(outside)}")


def exact_generation(emit, settings):
    """Prefix-cached batched answers vs per-question `generate`, float32, on the first images' questions."""
    _prepare(settings)
    _exact_float32()
    model, tokenizer, answerer = _answerer(settings, torch.float32)
    work, source = question_work(settings)
    questions_by_image = dict(list(by_image(work).items())[: settings["exact_images"]])
    pictures = _pictures(settings, model, questions_by_image)
    compared = identical = 0
    for image, questions in questions_by_image.items():
        for text, answer in zip(questions, answerer.answer(pictures[image], questions)):
            compared += 1
            identical += answer == per_question_answer(
                model, answerer, tokenizer, pictures[image], text, settings["max_new_tokens"]
            )
    emit(
        {
            "dtype": "float32",
            "compared": compared,
            "identical_answers": identical,
            "min_identical_share": GENERATION_MIN_IDENTICAL,
            "question_source": source,
        }
    )
    if identical < GENERATION_MIN_IDENTICAL * compared:
        raise CheckFailed(f"{compared - identical} of {compared} cached answers differ from per-question generate")


def qwen2_5_vl(emit, settings):
    """The Qwen2.5-VL shape (the run's 7b: Qwen2.5-VL-7B-Instruct's config; tiny: the tiny one): bench_train's
    stage-1 step, ours and the usual recipe, at the first pair count; then POPE answering, ours against
    per-question `generate` (at most QWEN_POPE's questions)."""
    qwen = {**settings, "shape": QWEN_SHAPES[settings["shape"]], "tokenizer": None, "pairs": settings["pairs"][:1]}
    for method in ("ours", "usual"):
        train(lambda record, method=method: emit({"part": f"train/1/{method}", **record}), qwen, "1", method)
    qwen.update({name: min(settings[name], most) for name, most in QWEN_POPE.items()})
    pope(lambda record: emit({**record, "part": f"pope/{record['part']}"}), qwen)
