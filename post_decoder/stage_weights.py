"""Merging trained stage weights into a checkpoint, with the post-decoder `replace_bin.py --tune_stage`
semantics of the original work:

    stage 0  add the block, replace lm_head    (block and head trained together from a plain LLaVA)
    stage 1  add the block, keep lm_head       (stage 1 trains the block alone)
    stage 2  replace the block and lm_head     (stage 2 trains both, from a stage-1 checkpoint)

Trained tensors that the checkpoint already holds besides these (the projector, under
`--tune_mm_mlp_adapter`) are replaced in every stage: the original script dropped them silently.

Two ways to write the result (scripts/replace_bin.py is the command line):
  `replace_bin`  rewrites only the files that change (the weight files holding the changed keys,
                 the index, config.json), in the checkpoint's own format and key layout; into a new
                 folder, or in place with each replaced file kept as `NAME.bak`;
  `merge`        loads the base (any format, original LLaVA-1.5 converted) with `load_pretrained_model`,
                 puts the trained weights in, and saves a complete new folder in our layout.

Everything is checked before anything is written: the stage's rules, key sets (missing block
tensors, trained tensors the checkpoint has no place for), shapes and dtypes; an error names the
files and keys. Dtypes: a trained tensor is never rounded to another dtype unless asked
(`cast_dtype`, or `merge`'s explicit `dtype`), since that would silently change the trained model;
a block added by `replace_bin` keeps its trained dtype (loading casts it to the dtype asked for).
"""

import os
from dataclasses import dataclass, field

import torch

from .block import PostDecoderConfig, PostInteractionBlock
from .block.files import BLOCK_PREFIX, POST_DECODER_CONFIG
from .builder import load_pretrained_model
from .checkpoint_files import CheckpointFolder, TensorSpec
from .errors import InputError
from .family import family_for
from .saving import (
    PEFT_PREFIX,
    MissingCheckpointFile,
    check_new_folder,
    listing,
    read_weight_file,
    save_model_folder,
    without_peft_prefix,
)

TRAINED_FILES = ("trainable_weights.safetensors", "non_lora_trainables.bin")
_BLOCK_SHAPE_FIELDS = (
    "variant",
    "vision_source",
    "num_layers",
    "hidden_size",
    "vision_hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "rms_norm_eps",
)


@dataclass(frozen=True)
class Stage:
    adds_block: bool
    replaces_head: bool


STAGES = {
    0: Stage(adds_block=True, replaces_head=True),
    1: Stage(adds_block=True, replaces_head=False),
    2: Stage(adds_block=False, replaces_head=True),
}


class StageWeightsError(InputError):
    """The trained weights do not fit the checkpoint under the stage's rules (nothing was written)."""


@dataclass
class TrainedWeights:
    path: str
    state: dict[str, torch.Tensor]  # our names
    block_config: PostDecoderConfig | None
    block_config_path: str | None


@dataclass
class MergePlan:
    updates: dict[str, torch.Tensor]  # our names -> the tensor to store
    added: list[str]
    replaced: list[str]
    block_config: PostDecoderConfig | None  # the added block's resolved config
    head: str  # the head's tensor (the family's `head_key`)


@dataclass
class MergeReport:
    stage: int
    plan: MergePlan
    destination: str
    written: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        plan, rules = self.plan, STAGES[self.stage]
        lines = [f"stage {self.stage} -> {self.destination}"]
        if plan.block_config is not None:
            lines.append(
                f"  added the block ({plan.block_config.variant}, {plan.block_config.num_layers} layer(s)): "
                f"{len(plan.added)} tensors"
            )
        blocks = [name for name in plan.replaced if name.startswith(BLOCK_PREFIX)]
        if blocks:
            lines.append(f"  replaced the block: {len(blocks)} tensors")
        lines.append(f"  {'replaced' if rules.replaces_head else 'kept'} {plan.head}")
        others = [name for name in plan.replaced if not name.startswith(BLOCK_PREFIX) and name != plan.head]
        if others:
            lines.append(
                f"  replaced {len(others)} other trained tensors: "
                f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"
            )
        if self.written:
            lines.append(f"  wrote: {', '.join(self.written)}")
        if self.backups:
            lines.append(f"  previous versions kept: {', '.join(self.backups)}")
        if not self.written:
            lines.append("  dry run: nothing written")
        return "\n".join(lines)


# --- reading the trained weights ---


def read_trained_weights(path: str, block_config_path: str | None = None) -> TrainedWeights:
    """A trainer checkpoint folder (`trainable_weights.safetensors`, else `non_lora_trainables.bin`)
    or one such file; the block's config is `post_decoder_config.json` beside it unless named."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        found = [name for name in TRAINED_FILES if os.path.isfile(os.path.join(path, name))]
        if not found:
            raise MissingCheckpointFile(f"no trained weights in {path}: expected {' or '.join(TRAINED_FILES)}")
        path = os.path.join(path, found[0])
    if not os.path.isfile(path):
        raise MissingCheckpointFile(f"trained weights {path} do not exist")
    raw = read_weight_file(path)
    state = {}
    for name, tensor in raw.items():
        ours = without_peft_prefix(name)
        if ours in state:
            raise InputError(f"{path} holds {ours} twice (with and without the {PEFT_PREFIX!r} prefix)")
        state[ours] = tensor
    lora = sorted(name for name in state if "lora_" in name)
    if lora:
        raise InputError(
            f"{path} holds LoRA adapter weights ({lora[0]} and {len(lora) - 1} more): merge the adapters with "
            "PEFT's merge_and_unload; pass non_lora_trainables.bin here for the other trained tensors"
        )
    if not state:
        raise InputError(f"{path} holds no tensors")

    if block_config_path is None:
        beside = os.path.join(os.path.dirname(path), POST_DECODER_CONFIG)
        block_config_path = beside if os.path.isfile(beside) else None
    elif not os.path.isfile(block_config_path):
        raise MissingCheckpointFile(f"block config {block_config_path} does not exist")
    block_config = PostDecoderConfig.from_json_file(block_config_path) if block_config_path else None
    return TrainedWeights(path, state, block_config, block_config_path)


# --- the checks: what a stage may write, decided before anything is written ---


def plan_merge(
    stage: int,
    trained: TrainedWeights,
    target: dict[str, TensorSpec],
    target_block_config: PostDecoderConfig | None,
    backbone_config,
    where: str,
    head: str,
    cast_dtype: bool = False,
    added_dtype: torch.dtype | None = None,
) -> MergePlan:
    """The tensors to store, after every check; raises StageWeightsError listing every problem.

    target: the checkpoint's (or loaded model's) tensors under our names; target_block_config: its block's.
    backbone_config: a callable returning the checkpoint's backbone config (read only when a block is added).
    head: the head's tensor name (`family.head_key`).
    added_dtype: the dtype an added block must have (None: it keeps the trained dtype).
    cast_dtype: cast a trained tensor to its destination's dtype instead of refusing a difference.
    """
    if stage not in STAGES:
        raise ValueError(f"tune_stage must be one of {sorted(STAGES)}, got {stage}")
    rules = STAGES[stage]
    errors, missing, unexpected = [], [], []
    block = sorted(name for name in trained.state if name.startswith(BLOCK_PREFIX))
    target_block = sorted(name for name in target if name.startswith(BLOCK_PREFIX))
    destinations: dict[str, tuple[tuple[int, ...], torch.dtype | None, str]] = {}  # name -> (shape, dtype, where)
    block_config = None

    if rules.adds_block:
        if not block:
            errors.append(f"stage {stage} adds a block, but the trained weights hold no {BLOCK_PREFIX}* tensors")
        if trained.block_config is None:
            expected_config = os.path.join(os.path.dirname(trained.path), POST_DECODER_CONFIG)
            errors.append(
                f"stage {stage} adds a block, but its config {expected_config} is missing "
                "(or pass --post_decoder_config)"
            )
        if target_block:
            errors.append(
                f"the checkpoint already holds a block ({target_block[0]} in {target[target_block[0]].file}): "
                "stage 2 replaces a block"
            )
        if block and trained.block_config is not None and not target_block:
            block_config = trained.block_config.resolved_for(backbone_config())
            shapes = _block_shapes(block_config)
            missing += [
                f"{name} (the block of {trained.block_config_path} has it)"
                for name in sorted(set(shapes) - set(block))
            ]
            unexpected += [
                f"{name} (not in the block of {trained.block_config_path})"
                for name in sorted(set(block) - set(shapes))
            ]
            described = f"the block of {trained.block_config_path}"
            destinations.update({name: (shapes[name], added_dtype, described) for name in block if name in shapes})
    elif block:
        if not target_block:
            errors.append(
                "stage 2 replaces the block, but the checkpoint holds none: "
                "merge the stage-1 weights first (--tune_stage 1)"
            )
        else:
            missing += [f"{name} (in {target[name].file})" for name in sorted(set(target_block) - set(block))]
            unexpected += [
                f"{name} (the checkpoint's block has no such tensor)"
                for name in sorted(set(block) - set(target_block))
            ]
            if trained.block_config is not None and target_block_config is not None:
                difference = _block_difference(trained.block_config, target_block_config)
                if difference:
                    errors.append(
                        f"the trained block ({trained.block_config_path}) is not the checkpoint's: {difference}"
                    )

    if rules.replaces_head and head not in trained.state:
        errors.append(f"stage {stage} replaces {head}, but the trained weights hold none")
    if not rules.replaces_head and head in trained.state:
        errors.append(
            f"stage {stage} keeps the checkpoint's head, but the trained weights hold {head}: "
            "--tune_stage 0 adds the block and replaces the head"
        )

    for name in trained.state:
        if name in target and name not in destinations:
            destinations[name] = (target[name].shape, target[name].dtype, target[name].file)
        elif not name.startswith(BLOCK_PREFIX):
            unexpected.append(f"{name} (not in the checkpoint)")

    updates, mis_shaped, mis_typed = {}, [], []
    for name, (shape, dtype, file) in destinations.items():
        tensor = trained.state[name]
        if tuple(tensor.shape) != tuple(shape):
            mis_shaped.append(f"{name}: trained {tuple(tensor.shape)} vs {tuple(shape)} in {file}")
        elif dtype is not None and tensor.dtype != dtype and not cast_dtype:
            mis_typed.append(f"{name}: trained {_dtype_name(tensor.dtype)} vs {_dtype_name(dtype)} in {file}")
        else:
            updates[name] = tensor.to(dtype) if dtype is not None else tensor
    if any(line.startswith(head) for line in mis_shaped):
        errors.append(
            f"{head} has another vocabulary size than the checkpoint's: on an original LLaVA-1.5 checkpoint, a head "
            "trained on the converted model has <image> and <pad> added: merge it with --merge, which writes the "
            "converted folder (else the weights were trained on another base)"
        )
    if mis_typed:
        errors.append(
            "dtypes differ: pass --cast_dtype to store the trained tensors in the checkpoint's dtype (this rounds "
            "them; with --merge, --dtype float32 keeps them exact)"
        )

    if errors or missing or unexpected or mis_shaped or mis_typed:
        raise StageWeightsError(
            f"cannot merge the stage-{stage} weights {trained.path} into {where}:\n"
            + "".join(f"  {line}\n" for line in errors)
            + listing("missing block tensors", missing)
            + listing("unexpected trained tensors", unexpected)
            + listing("mis-shaped", mis_shaped)
            + listing("other dtype", mis_typed)
        )
    added = sorted(name for name in updates if name not in target)
    replaced = sorted(name for name in updates if name in target)
    return MergePlan(updates, added, replaced, block_config, head)


def _block_shapes(block_config: PostDecoderConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        block = PostInteractionBlock(block_config)
    return {BLOCK_PREFIX + name: tuple(tensor.shape) for name, tensor in block.state_dict().items()}


def _block_difference(trained: PostDecoderConfig, existing: PostDecoderConfig) -> str:
    differences = [
        f"{key} {getattr(trained, key)!r} vs {getattr(existing, key)!r}"
        for key in _BLOCK_SHAPE_FIELDS
        if getattr(trained, key) is not None
        and getattr(existing, key) is not None
        and getattr(trained, key) != getattr(existing, key)
    ]
    return ", ".join(differences)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- replace_bin: rewrite the checkpoint's own files ---


def replace_bin(
    stage: int,
    path_model_state_dict: str,
    path_non_lora_state_dict: str,
    output: str | None = None,
    post_decoder_config: str | None = None,
    cast_dtype: bool = False,
    overwrite_backup: bool = False,
    dry_run: bool = False,
) -> MergeReport:
    """Merge trained weights into a checkpoint's files (folder, index, or a shard as the original
    took); `output`: a new folder, else in place with `*.bak` backups."""
    if output is not None:
        check_new_folder(output, "--output")
    trained = read_trained_weights(path_non_lora_state_dict, post_decoder_config)
    checkpoint = CheckpointFolder(path_model_state_dict)
    target = checkpoint.specs()
    target_block_config = _checkpoint_block_config(checkpoint, target)
    plan = plan_merge(
        stage,
        trained,
        target,
        target_block_config,
        lambda: checkpoint.family.backbone_config(checkpoint.config, checkpoint.folder),
        checkpoint.description,
        checkpoint.family.head_key,
        cast_dtype,
        added_dtype=checkpoint.stored_dtype() if cast_dtype else None,
    )
    config = _config_with_block(checkpoint, plan.block_config) if plan.block_config is not None else None
    report = MergeReport(stage, plan, output or checkpoint.folder)
    if not dry_run:
        report.written = checkpoint.rewrite(plan.updates, config, output, overwrite_backup)
        if output is None:
            report.backups = [name + ".bak" for name in report.written]
    return report


def _checkpoint_block_config(checkpoint: CheckpointFolder, target: dict[str, TensorSpec]) -> PostDecoderConfig | None:
    values = checkpoint.config.get("post_decoder_config")
    has_weights = any(name.startswith(BLOCK_PREFIX) for name in target)
    if bool(values) != has_weights:
        raise InputError(
            f"{checkpoint.folder} is inconsistent: config.json "
            + (
                "has a post_decoder_config but the weights hold no block"
                if values
                else "has no post_decoder_config but the weights hold a block"
            )
        )
    return PostDecoderConfig.from_dict(values) if values else None


def _config_with_block(checkpoint: CheckpointFolder, block_config: PostDecoderConfig) -> dict:
    """config.json with the block's config (its own fields only), as the checkpoint's family writes it."""
    values = block_config.to_dict()
    block_values = {key: values[key] for key in ("model_type", *PostDecoderConfig.__annotations__)}
    return checkpoint.family.config_with_block(checkpoint.config, block_values)


# --- merge: a complete folder that load_pretrained_model opens ---


def merge(
    stage: int,
    base: str,
    path_non_lora_state_dict: str,
    output: str,
    dtype: torch.dtype | None = None,
    cast_dtype: bool = False,
    post_decoder_config: str | None = None,
    dry_run: bool = False,
) -> MergeReport:
    """Load `base` (any LLaVA-1.5 format), put the trained weights in under the stage's rules, and
    save a complete folder at `output` (a new folder) in `dtype` (default: the base's stored dtype)."""
    check_new_folder(output, "--output")
    trained = read_trained_weights(path_non_lora_state_dict, post_decoder_config)
    checkpoint = CheckpointFolder(base)
    _checkpoint_block_config(checkpoint, checkpoint.specs())
    out_dtype = dtype or checkpoint.stored_dtype()
    tokenizer, model, image_processor, _ = load_pretrained_model(checkpoint.folder, dtype=out_dtype, device="cpu")
    target = {name: TensorSpec(tuple(t.shape), t.dtype, checkpoint.folder) for name, t in model.state_dict().items()}
    current_block = model.post_decoder.config if model.post_decoder is not None else None
    plan = plan_merge(
        stage,
        trained,
        target,
        current_block,
        lambda: model.config,
        checkpoint.folder,
        family_for(model).head_key,
        cast_dtype=cast_dtype or dtype is not None,
        added_dtype=out_dtype,
    )
    if plan.block_config is not None:
        model.attach_post_decoder(plan.block_config)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in plan.updates.items():
            state[name].copy_(tensor)
    report = MergeReport(stage, plan, output)
    if not dry_run:
        save_model_folder(model, tokenizer, image_processor, output)
        report.written = sorted(os.listdir(output))
    return report
