"""`scripts/bench_train.py --cached`: one epoch over the same pairs without and with the backbone cache, in one
process, on the same model.

- uncached: the data as training loads it (each image file decoded and preprocessed, the pairs collated), the
  frozen backbone (prompt once, both answers continued from its KV cache), the heads, backward, optimizer;
- build: the backbone once over the pairs, the states written to a cache folder (ha_dpo/cache, its real code);
- cached: the states read back from that folder (memory-mapped shards), collated, the heads, backward, optimizer.
The pairs are synthetic: `pairs` distinct images (random pixels, written as PNG files), a question each, answers
of random words. The cache's size per pair and per image is read from its files.
"""

import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from ha_dpo.cache.build import build
from ha_dpo.cache.keys import file_digests
from ha_dpo.cache.preference import CachedPreferenceCollator, CachedPreferenceDataset, PreferenceSource
from ha_dpo.cache.store import SHARD_BYTES, ShardWriter, StateStore
from ha_dpo.data.collators import PreferenceCollator
from ha_dpo.data.preference_data import PreferenceDataset, PreferenceSample
from post_decoder.family import family_for

QUESTION = "Describe the image in detail. What objects are there, and where are they?"


def synthetic_dataset(model, tokenizer, pairs: int, answer_words: int, folder: str) -> PreferenceDataset:
    """`pairs` pairs, each on its own image, answers of `answer_words` random words (about one token each)."""
    generator = np.random.default_rng(0)
    size = model.config.vision_config.image_size
    words = sorted({piece[1:] for piece in tokenizer.get_vocab() if piece.startswith("▁") and piece[1:].isalpha()})
    samples = []
    for number in range(pairs):
        path = os.path.join(folder, f"{number}.png")
        Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        chosen, rejected = (" ".join(generator.choice(words, answer_words)) for _ in range(2))
        samples.append(PreferenceSample(str(number), path, QUESTION, chosen.capitalize(), rejected.capitalize()))
    family, config = family_for(model), model.config
    return PreferenceDataset(
        samples, tokenizer, family.image_token_id(config), family.image_token_count(config), model_max_length=4096
    )


def to_device(batch: dict, device) -> dict:
    return {name: value.to(device) if isinstance(value, torch.Tensor) else value for name, value in batch.items()}


def timed_epoch(step, batches, load, device, warmup: int) -> float:
    """Seconds for one pass over `batches` (`load` indices -> a collated batch), after `warmup` untimed batches."""
    cuda = str(device).startswith("cuda")
    for indices in batches[:warmup]:
        step(to_device(load(indices), device))
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for indices in batches:
        step(to_device(load(indices), device))
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cached_epoch_comparison(model, tokenizer, image_processor, step, autocast, args) -> dict:
    """pairs/s of the uncached epoch, the build and the cached epoch, and the cache's disk sizes."""
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as folder:
        images, cache = os.path.join(folder, "images"), os.path.join(folder, "cache")
        os.makedirs(images), os.makedirs(cache)
        dataset = synthetic_dataset(model, tokenizer, args.epoch_pairs, args.answer_tokens, images)
        collator = PreferenceCollator(tokenizer, image_processor)
        batches = [
            list(range(start, min(start + args.pairs, len(dataset)))) for start in range(0, len(dataset), args.pairs)
        ]
        device = model.device

        uncached = timed_epoch(
            step, batches, lambda indices: collator([dataset[i] for i in indices]), device, args.warmup
        )

        source = PreferenceSource(dataset, collator, file_digests(sample.image for sample, *_ in dataset.items), False)
        store = StateStore(cache)
        writer = ShardWriter(cache, 0, None, SHARD_BYTES)
        start = time.perf_counter()
        build(model, source, store, batches, writer, lambda batch: to_device(batch, device), autocast)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        building = time.perf_counter() - start
        store.refresh()

        reader = CachedPreferenceDataset(source, store, read_prompt_states=False)
        cached_collator = CachedPreferenceCollator(tokenizer.pad_token_id)
        cached = timed_epoch(
            step, batches, lambda indices: cached_collator([reader[i] for i in indices]), device, args.warmup
        )
        sizes = store.sizes_by_kind()
        answer_tokens = np.mean([len(chosen) + len(rejected) for _, _, chosen, rejected in dataset.items]) / 2
        return {
            "pairs": len(dataset),
            "answer_tokens": float(answer_tokens),
            "uncached_pairs_per_second": len(dataset) / uncached,
            "build_pairs_per_second": len(dataset) / building,
            "cached_pairs_per_second": len(dataset) / cached,
            "bytes_per_pair": sizes["pair"][1] / sizes["pair"][0],
            "bytes_per_image": sizes["image"][1] / sizes["image"][0],
            "states_dtype": str(store.get(source.entry_keys[0]).dtype).replace("torch.", ""),
        }
