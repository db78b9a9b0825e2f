"""What a backbone cache was built from, kept in DIR/cache.json, and the check that a run may read it.

Compared (a run with any other value is refused, in one line naming what differs):
  kind              preference pairs (DPO) or supervised samples (SFT): they store different positions
  backbone_weights  a fingerprint of the backbone's weights (eval.answer_provenance's: SHA-256 over every
                    tensor's name, shape, dtype and 1,024 evenly spaced values), the block and lm_head left out,
                    so stage 1, stage 2 (from the merged stage 1) and head-only runs of one base share a cache
  backbone_config   a digest of the model's config without the block and the names a merge changes
  compute_dtype     the dtype the backbone runs in (--bf16 / --fp16 / float32)
  image_processing  a digest of the image processor's settings, and which vision features the block reads
  tokenizer         a digest of the vocabulary and special tokens; conv_mode: the prompt template
  cache_dtype       the dtype the states are stored in (--cache_dtype; default the dtype they come in)
The data files, `model_max_length` and the seed are not compared: they decide which pairs a run has, and
every entry is named by its pair's content (keys.py), so a run never reads another pair's states.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields

from torch import nn

from eval.answer_provenance import weights_fingerprint
from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError
from post_decoder.family import family_for

MANIFEST = "cache.json"
FORMAT = 1
PREFERENCE, SUPERVISED = "preference pairs", "supervised samples"
# Config entries that name a checkpoint rather than define the backbone's computation (a merged stage-1
# folder is `llava_post_decoder` with a block; its backbone is its base's).
NAME_KEYS = {"_name_or_path", "architectures", "model_type", "post_decoder_config", "transformers_version"}
DTYPE_KEYS = {"dtype", "torch_dtype"}  # the compute dtype is compared on its own


@dataclass(frozen=True)
class CacheIdentity:
    kind: str
    family: str
    backbone_weights: str
    backbone_config: str
    compute_dtype: str
    image_processing: str
    vision_source: str
    tokenizer: str
    conv_mode: str
    cache_dtype: str

    def differences(self, recorded: dict) -> list[str]:
        return [
            f"{item.name} {recorded.get(item.name)!r} there, {getattr(self, item.name)!r} now"
            for item in fields(self)
            if recorded.get(item.name) != getattr(self, item.name)
        ]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without(value, keys: set, top_only: set = frozenset()):
    if isinstance(value, dict):
        return {name: _without(item, keys) for name, item in value.items() if name not in keys | top_only}
    return value


def backbone_fingerprint(model) -> str:
    """The weights fingerprint of everything but the block and the output head."""
    left_out = {id(model.post_decoder), id(model.get_output_embeddings())}
    backbone = nn.ModuleDict({name: child for name, child in model.named_children() if id(child) not in left_out})
    return weights_fingerprint(backbone)


def config_digest(config) -> str:
    # `model_type` and the names go at the top only: the nested ones (llama, clip) describe the backbone.
    raw = config.to_dict()
    return _digest(_without(raw, DTYPE_KEYS | {"_name_or_path", "transformers_version"}, top_only=NAME_KEYS))


def tokenizer_digest(tokenizer) -> str:
    return _digest([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.all_special_ids])


def vision_source(model) -> str:
    """The vision features a block reads (a run without a block reads none: the tower's are stored)."""
    return model.post_decoder.config.vision_source if model.post_decoder is not None else "vision_tower"


def identity_of(
    kind, model, tokenizer, image_processor, conv_mode, compute_dtype, cache_dtype: str | None
) -> CacheIdentity:
    return CacheIdentity(
        kind=kind,
        family=family_for(model).name,
        backbone_weights=backbone_fingerprint(model),
        backbone_config=config_digest(model.config),
        compute_dtype=str(compute_dtype).removeprefix("torch."),
        image_processing=_digest(image_processor.to_dict()),
        vision_source=vision_source(model),
        tokenizer=tokenizer_digest(tokenizer),
        conv_mode=conv_mode,
        cache_dtype=cache_dtype or "as computed",
    )


def write_manifest(directory: str, identity: CacheIdentity, prompt_states: bool, built_from: dict):
    manifest = {"format": FORMAT, "identity": asdict(identity), "prompt_states": prompt_states, **built_from}
    with atomic_file(os.path.join(directory, MANIFEST)) as temporary, open(temporary, "w") as handle:
        json.dump(manifest, handle, indent=2)


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"--backbone_cache {directory}: {MANIFEST} is not the JSON this tool writes ({error})"
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("identity"), dict)
    ):
        raise InputError(
            f"--backbone_cache {directory}: {MANIFEST} is not a backbone cache of this version (format {FORMAT}); "
            "name a new folder"
        )
    return manifest


def check_identity(directory: str, manifest: dict, identity: CacheIdentity, explicit_cache_dtype: bool):
    """Refuse a cache built from anything else than this run's backbone and inputs. Without --cache_dtype, a
    run takes the cache's own storage dtype."""
    recorded = dict(manifest["identity"])
    if not explicit_cache_dtype:
        recorded["cache_dtype"] = identity.cache_dtype
    differences = identity.differences(recorded)
    if differences:
        raise InputError(
            f"--backbone_cache {directory} was built for another run ({'; '.join(differences)}): "
            "name another folder for this one (a cache serves one backbone, dtype, tokenizer and template)"
        )
