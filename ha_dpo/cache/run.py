"""`--backbone_cache DIR` in the training scripts: check the run may use it, build what is missing, and
switch the trainer's data to the cached states. Called once the trainer exists (the build follows the
trainer's own first-epoch batches) and before `train()`.
"""

import os
import shutil

import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from post_decoder.dtypes import DTYPES
from post_decoder.errors import InputError
from post_decoder.family import family_for

from ..trainer.training_model import training_dtype
from .build import build, random_state_kept, timed
from .identity import PREFERENCE, check_identity, identity_of, read_manifest, vision_source, write_manifest
from .keys import file_digests
from .preference import CachedPreferenceCollator, CachedPreferenceDataset, PreferenceSource
from .store import SHARD_BYTES, ShardWriter, StateStore
from .supervised import CachedSupervisedCollator, CachedSupervisedDataset, SupervisedSource

FREE_SPACE_MARGIN = 1.05


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1024
    raise AssertionError


def describe(store) -> str:
    """'31.6 MiB on disk: 5926 pairs (4.8 KiB each), 1000 images (4.0 KiB each)'"""
    kinds = ", ".join(
        f"{count} {kind}s ({human_bytes(size / count)} each)" for kind, (count, size) in store.sizes_by_kind().items()
    )
    return f"{human_bytes(store.shard_bytes())} on disk: {kinds}"


def use_backbone_cache(trainer, kind: str, tokenizer, image_processor, conv_mode: str):
    """Open (or start) the cache at `trainer.args.backbone_cache`, build the entries this run's data lacks
    (what it will take on disk is printed first), and make the trainer read the states from it."""
    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model).policy
    directory = args.backbone_cache
    uses_self_attention = model.post_decoder is not None and model.post_decoder.config.uses_self_attention
    _refuse_what_cannot_be_cached(directory, kind, uses_self_attention)
    identity = identity_of(kind, model, tokenizer, image_processor, conv_mode, training_dtype(args), args.cache_dtype)
    manifest = _opened(
        trainer, directory, identity, kind == PREFERENCE and (args.cache_prompt_states or uses_self_attention)
    )
    cache_dtype = DTYPES.get(manifest["identity"]["cache_dtype"])  # None: the states' own dtype
    if uses_self_attention and not manifest["prompt_states"]:
        raise InputError(
            f"--backbone_cache {directory} holds the hidden states at the answer positions only, and "
            "transformer_block's self-attention also reads every prompt position's: name a new folder (this run "
            "then stores them: prompt length x hidden size more per pair), or build the shared cache with "
            "--cache_prompt_states True"
        )

    source = _source(kind, trainer, bool(manifest["prompt_states"]))
    store = StateStore(directory)
    say = print if trainer.is_world_process_zero() else (lambda *_, **__: None)
    say(_plan(directory, source, store, model, cache_dtype or training_dtype(args)), flush=True)
    trainer.accelerator.wait_for_everyone()  # every rank has scanned the shards before any rank adds one
    model.to(args.device)
    writer = ShardWriter(directory, args.process_index, cache_dtype, SHARD_BYTES)
    prepare, autocast = trainer._prepare_inputs, trainer.accelerator.autocast  # as training moves and casts
    show = trainer.is_local_process_zero() and not args.disable_tqdm
    with random_state_kept():
        batches = trainer.first_epoch_batches()
        built, seconds = timed(build, model, source, store, batches, writer, prepare, autocast, show)
        trainer.accelerator.wait_for_everyone()  # every rank's shards are complete before any rank reads them
        store.refresh()
        # What the first epoch did not hold (--dataloader_drop_last leaves out its last pairs; a later epoch may
        # serve them): the ranks share it out alike, since all of them see the same shards now.
        absent = [index for index in range(len(source)) if any(key not in store for key in source.keys_of(index))]
        size, mine = max(map(len, batches), default=1), absent[args.process_index :: args.world_size]
        leftover = [mine[start : start + size] for start in range(0, len(mine), size)]
        built += build(model, source, store, leftover, writer, prepare, autocast)
        trainer.accelerator.wait_for_everyone()
    store.refresh()
    absent = sum(any(key not in store for key in source.keys_of(index)) for index in range(len(source)))
    if absent:
        raise RuntimeError(f"backbone cache {directory}: {absent} {source.unit} still missing after the build")
    if built:
        say(f"backbone cache {directory}: built in {seconds:.1f} s ({built} batches on the first process)", flush=True)
    if kind == PREFERENCE:
        trainer.train_dataset = CachedPreferenceDataset(source, store, read_prompt_states=uses_self_attention)
        trainer.data_collator = CachedPreferenceCollator(tokenizer.pad_token_id)
    else:
        trainer.train_dataset = CachedSupervisedDataset(source, store)
        trainer.data_collator = CachedSupervisedCollator()
    say(f"backbone cache {directory}: {describe(store)}; training reads it", flush=True)


def _opened(trainer, directory: str, identity, prompt_states: bool) -> dict:
    """The cache's manifest (written by the first process if the folder has none), checked against `identity`."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InputError(f"--backbone_cache {directory} is a file: name a folder (new, or a cache to read)")
    os.makedirs(directory, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model).policy
    if trainer.is_world_process_zero() and read_manifest(directory) is None:
        write_manifest(directory, identity, prompt_states, {"model_name_or_path": model.config._name_or_path})
    trainer.accelerator.wait_for_everyone()  # every rank reads the manifest rank 0 wrote
    manifest = read_manifest(directory)
    check_identity(directory, manifest, identity, explicit_cache_dtype=trainer.args.cache_dtype is not None)
    return manifest


def _refuse_what_cannot_be_cached(directory: str, kind: str, uses_self_attention: bool):
    if is_deepspeed_zero3_enabled():
        raise InputError(
            f"--backbone_cache {directory} with ZeRO-3: the cache runs the backbone outside DeepSpeed's engine, and "
            "ZeRO-3 partitions its weights as the model loads; use scripts/zero2.json (the backbone is frozen: "
            "ZeRO-3 only spreads its weights)"
        )
    if kind != PREFERENCE and uses_self_attention:
        raise InputError(
            f"--backbone_cache {directory}: transformer_block's self-attention reads every position of a sample, "
            "so the cache would hold the whole sequence's hidden states; train it without --backbone_cache"
        )


def _source(kind: str, trainer, prompt_states: bool):
    dataset, collator = trainer.train_dataset, trainer.data_collator
    digests = file_digests(sample.image for sample, *_ in dataset.items if sample.image)
    if kind == PREFERENCE:
        return PreferenceSource(dataset, collator, digests, prompt_states)
    return SupervisedSource(dataset, collator, digests)


def _plan(directory, source, store, model, dtype: torch.dtype) -> str:
    """What the build will add and the disk it will take (refused if the disk has not that much free)."""
    family, source_name = family_for(model), vision_source(model)
    sizes = family.block_sizes(model.config, source_name)
    item = torch.empty((), dtype=dtype).element_size()
    missing_entries, missing_images = {}, {}
    for index in range(len(source)):
        key, image = source.entry_keys[index], source.image_keys[index]
        if key not in store:
            missing_entries[key] = source.rows(index)
        if image and image not in store:
            tokens = source.image_token_counts[index]
            missing_images[image] = family.vision_rows_per_image(model.config, tokens, source_name)
    entry_bytes = sum(missing_entries.values()) * sizes["hidden_size"] * item
    image_bytes = sum(missing_images.values()) * sizes["vision_hidden_size"] * item
    distinct = len(set(source.entry_keys))
    if not missing_entries and not missing_images:
        return f"backbone cache {directory}: all {distinct} {source.unit} are there"
    total = entry_bytes + image_bytes
    free = shutil.disk_usage(directory).free
    if total * FREE_SPACE_MARGIN > free:  # every rank decides alike: none is left waiting at a barrier
        raise InputError(
            f"--backbone_cache {directory} needs about {human_bytes(total)} more and the disk has "
            f"{human_bytes(free)} free: free some space or name a folder on a larger disk"
        )
    per_entry = entry_bytes / max(len(missing_entries), 1)
    per_image = image_bytes / max(len(missing_images), 1)
    return (
        f"backbone cache {directory}: {distinct - len(missing_entries)} of {distinct} distinct {source.unit} there; "
        f"building {len(missing_entries)} {source.unit} and {len(missing_images)} images: about {human_bytes(total)} "
        f"on disk ({human_bytes(per_entry)} per {source.unit[:-1]}, {human_bytes(per_image)} per image, "
        f"{str(dtype).removeprefix('torch.')}; {human_bytes(free)} free)"
    )
