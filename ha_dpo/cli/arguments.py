"""Arguments of the training scripts, with HA-DPO's and LLaVA's names.

Every flag of HA-DPO's README commands is accepted, and each is either used or refused with a
message saying why (HA-DPO silently ignored some). Each dataclass checks itself when it is built
(`__post_init__`, as TRL's `DPOConfig`), so arguments built in Python fail as early as the command
line's. `check_arguments` checks what needs two of them together and returns notes for flags that
have nothing to do in this run.
"""

import re
from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from post_decoder import VARIANTS
from post_decoder.compat import activation_checkpointing_field
from post_decoder.dtypes import DTYPES
from post_decoder.errors import InputError
from post_decoder.family import conv_modes

from ..objective.dpo_loss import LOSS_TYPES

CONV_MODE_HELP = (
    "the prompt template of the samples; default: the model family's own (LLaVA-1.5: vicuna_v1, its own training "
    "template, as HA-DPO's --version v1; llava_v1 is HA-DPO's POPE evaluation's. Qwen2-VL/Qwen2.5-VL: qwen2_vl, "
    "Qwen3-VL: qwen3_vl, their chat templates)"
)
SFT_CONV_MODE_HELP = CONV_MODE_HELP
LORA_ONLY = "(--lora_enable True runs only)"

# transformers 5 renamed these; HA-DPO's and LLaVA's commands still use the old names
# (`--warmup_steps` reads a float below 1 as the ratio of all steps).
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps"}


def refuse(refusals: list[str]) -> None:
    """One error for every refused flag, so a command is fixed in one go."""
    if refusals:
        raise InputError("refused: " + "; ".join(refusals))


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "any checkpoint post_decoder.builder.load_pretrained_model opens"}
    )
    version: str = field(default="v1", metadata={"help": "HA-DPO's flag, v1 only; the template is --conv_mode's"})
    vision_tower: str | None = field(
        default=None,
        metadata={
            "help": "HA-DPO's flag: the tower is always the checkpoint's own; if given, its name's patch and image "
            "size (as in openai/clip-vit-large-patch14-336) must be the checkpoint tower's"
        },
    )
    mm_projector_type: str | None = field(
        default=None, metadata={"help": "checked against the checkpoint (mlp2x_gelu)"}
    )
    mm_vision_select_layer: int | None = field(default=None, metadata={"help": "checked against the checkpoint"})
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "LLaVA's flag; LLaVA-1.5 uses it off only"})
    mm_use_im_patch_token: bool = field(default=False, metadata={"help": "LLaVA's flag; LLaVA-1.5 uses it off only"})
    freeze_backbone: bool = field(
        default=True, metadata={"help": "the LLM backbone stays frozen (the block and LoRA need it)"}
    )
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "train the projector too (LoRA runs only)"})
    tune_post_decoder: bool = field(
        default=False, metadata={"help": "train the post-interaction block (stage 1 and 2)"}
    )
    tune_lm_head: bool = field(default=False, metadata={"help": "train lm_head (stage 2, or head only)"})
    post_decoder_variant: str | None = field(
        default=None, metadata={"help": f"block of a new run: {', '.join(VARIANTS)} (default post_interaction)"}
    )
    post_decoder_num_layers: int = field(
        default=1, metadata={"help": "layers of a new block (a checkpoint's own block keeps its own)"}
    )
    lora_enable: bool = field(default=False, metadata={"help": "HA-DPO's baseline: LoRA on the LLM's linear layers"})
    lora_r: int = field(default=64, metadata={"help": f"LoRA rank {LORA_ONLY}"})
    lora_alpha: int = field(default=16, metadata={"help": f"LoRA scaling alpha {LORA_ONLY}"})
    lora_dropout: float = field(default=0.05, metadata={"help": f"dropout on the LoRA inputs {LORA_ONLY}"})
    lora_bias: str = field(
        default="none", metadata={"help": f"PEFT's bias setting: none, all or lora_only {LORA_ONLY}"}
    )
    mm_projector_lr: float | None = field(
        default=None, metadata={"help": "LLaVA's separate projector learning rate: not implemented, refused if given"}
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Qwen-VL: the image processor's smallest image (pixels; default the checkpoint's own)"},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Qwen-VL: the image processor's largest image (pixels; default the checkpoint's own)"},
    )

    def __post_init__(self):
        refusals = []
        if self.version != "v1":
            refusals.append(
                f"--version {self.version}: keep v1 (HA-DPO's flag) and pick the template with --conv_mode"
            )
        if self.mm_use_im_start_end or self.mm_use_im_patch_token:
            refusals.append("--mm_use_im_start_end / --mm_use_im_patch_token: LLaVA-1.5 uses neither")
        if self.mm_projector_type not in (None, "mlp2x_gelu"):
            refusals.append(f"--mm_projector_type {self.mm_projector_type}: LLaVA-1.5's projector is mlp2x_gelu")
        if self.post_decoder_variant not in (None, *VARIANTS):
            refusals.append(f"--post_decoder_variant {self.post_decoder_variant}: choose one of {', '.join(VARIANTS)}")
        if self.vision_tower is not None and tower_shape_named(self.vision_tower) is None:
            refusals.append(
                f"--vision_tower {self.vision_tower}: the tower is the checkpoint's own, and this name does not say "
                "its patch and image size (as ...-patch14-336 does) to check it against; drop the flag"
            )
        shared = self.tune_post_decoder or self.tune_lm_head
        if self.lora_enable:
            if shared:
                refusals.append(
                    "--lora_enable with --tune_post_decoder/--tune_lm_head: "
                    "train LoRA or the head, not both in one run"
                )
            if self.mm_projector_lr is not None and not self.tune_mm_mlp_adapter:
                refusals.append("--mm_projector_lr needs --tune_mm_mlp_adapter True")
            if self.mm_projector_lr is not None:
                refusals.append(
                    "--mm_projector_lr: a separate projector learning rate is not implemented; drop the flag"
                )
        else:
            if not shared:
                refusals.append(
                    "nothing to train: pass --tune_post_decoder True, --tune_lm_head True or --lora_enable True"
                )
            if not self.freeze_backbone:
                refusals.append(
                    "--freeze_backbone False: the block and lm_head are trained on a frozen, shared backbone"
                )
            if self.tune_mm_mlp_adapter:
                refusals.append(
                    "--tune_mm_mlp_adapter True: "
                    "the projector is part of the shared frozen backbone; use --lora_enable"
                )
            defaults = {item.name: item.default for item in fields(self)}
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_bias", "mm_projector_lr"):
                if getattr(self, name) != defaults[name]:
                    refusals.append(f"--{name} is for --lora_enable True runs")
        if self.post_decoder_variant is not None and not self.tune_post_decoder:
            refusals.append("--post_decoder_variant needs --tune_post_decoder True")
        refuse(refusals)


def tower_shape_named(name: str) -> tuple[int, int] | None:
    """(patch size, image size) that a CLIP tower's name says, as `openai/clip-vit-large-patch14-336`
    ((14, 336); no size is CLIP's 224); None when the name does not say them."""
    match = re.search(r"patch(\d+)(?:-(\d+))?$", name.rstrip("/"))
    return (int(match.group(1)), int(match.group(2) or 224)) if match else None


def _data_refusals(image_aspect_ratio: str, lazy_preprocess: bool) -> list[str]:
    refusals = []
    if image_aspect_ratio != "pad":
        refusals.append(f"--image_aspect_ratio {image_aspect_ratio}: only LLaVA-1.5's 'pad' is implemented")
    if not lazy_preprocess:
        refusals.append("--lazy_preprocess False: images are always read when a sample is served; drop the flag")
    return refusals


@dataclass
class PreferenceDataArguments:
    vg_path: str | None = field(
        default=None, metadata={"help": "Visual Genome folder: image_data.json, VG_100K/, VG_100K_2/ (required)"}
    )
    desc_data_path: str | None = field(default=None, metadata={"help": "HA-DPO desc_data.json"})
    pope_data_path: str | None = field(default=None, metadata={"help": "HA-DPO pope_data.json"})
    all_pairs: bool = field(default=False, metadata={"help": "every pair, not HA-DPO's one pair per image"})
    pope_correct_pairs: bool = field(
        default=False,
        metadata={"help": "also train on the pope entries the model answered correctly (HA-DPO leaves them out)"},
    )
    strict: bool = field(default=False, metadata={"help": "stop at the first bad sample instead of skipping it"})
    image_aspect_ratio: str = field(default="pad", metadata={"help": "LLaVA-1.5's 'pad' only"})
    lazy_preprocess: bool = field(
        default=True, metadata={"help": "LLaVA's flag: images are always read lazily (False is refused)"}
    )
    conv_mode: str | None = field(default=None, metadata={"help": CONV_MODE_HELP, "choices": conv_modes()})

    def __post_init__(self):
        refusals = _data_refusals(self.image_aspect_ratio, self.lazy_preprocess)
        if self.vg_path is None:
            refusals.append(
                "--vg_path is required: the Visual Genome folder with image_data.json, VG_100K/ and VG_100K_2/"
            )
        if self.desc_data_path is None and self.pope_data_path is None:
            refusals.append("no pairs: give --desc_data_path, --pope_data_path or both")
        refuse(refusals)


@dataclass
class SupervisedDataArguments:
    data_path: str = field(metadata={"help": "LLaVA instruction json: [{id, image?, conversations}, ...]"})
    image_folder: str = field(default="", metadata={"help": "folder the samples' `image` paths are relative to"})
    keep_text_only: bool = field(
        default=True, metadata={"help": "keep samples without an image (the block passes them through)"}
    )
    strict: bool = field(default=False, metadata={"help": "stop at the first bad sample instead of skipping it"})
    image_aspect_ratio: str = field(default="pad", metadata={"help": "LLaVA-1.5's 'pad' only"})
    lazy_preprocess: bool = field(
        default=True, metadata={"help": "LLaVA's flag: images are always read lazily (False is refused)"}
    )
    is_multimodal: bool = field(
        default=True,
        metadata={
            "help": "LLaVA's flag: each sample says itself whether it has an image; False (ignore the images) is "
            "refused, --keep_text_only False drops the samples without one"
        },
    )
    conv_mode: str | None = field(default=None, metadata={"help": SFT_CONV_MODE_HELP, "choices": conv_modes()})

    def __post_init__(self):
        refusals = _data_refusals(self.image_aspect_ratio, self.lazy_preprocess)
        if not self.is_multimodal:
            refusals.append(
                "--is_multimodal False: the block reads the images; to train without them, drop the samples that "
                "have one from the data"
            )
        refuse(refusals)


@dataclass
class PostDecoderTrainingArguments(TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "prompt + answer tokens; answers are cut to fit"})
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "LLaVA's flag: not implemented, refused if True"}
    )
    remove_unused_columns: bool = field(
        default=False,  # the batches are ours, not the model forward's signature
        metadata={"help": "kept False: the collators build the batches, whatever the model's forward takes"},
    )
    plot: bool = field(default=True, metadata={"help": "write training_curves.png at the end"})
    backbone_cache: str | None = field(
        default=None,
        metadata={
            "help": "a folder for the frozen backbone's outputs: the first run computes them once over the data, "
            "later epochs, runs and resumed runs read them instead of running the backbone (block and head runs)"
        },
    )
    cache_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype the cache stores its states in (default: the dtype they come in)",
            "choices": tuple(DTYPES),
        },
    )
    cache_prompt_states: bool = field(
        default=False,
        metadata={
            "help": "also store every prompt position's hidden states (transformer_block reads them; prompt length "
            "x hidden size per pair more), so that one cache serves all variants; a transformer_block run that "
            "starts a cache stores them anyway"
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "train into an --output_dir that holds another run's files (its results are replaced only "
            "when this run's final save is complete); without it such a folder is refused"
        },
    )

    def __post_init__(self):
        refuse(self._refusals())
        super().__post_init__()

    def _refusals(self) -> list[str]:
        refusals = []
        if self.group_by_modality_length:
            refusals.append(
                "--group_by_modality_length True: not implemented (every preference pair has an image); drop the flag"
            )
        if self.backbone_cache is None:
            if self.cache_dtype is not None:
                refusals.append("--cache_dtype needs --backbone_cache DIR")
            if self.cache_prompt_states:
                refusals.append("--cache_prompt_states needs --backbone_cache DIR")
        return refusals


@dataclass
class PreferenceTrainingArguments(PostDecoderTrainingArguments):
    beta: float = field(default=0.1, metadata={"help": "DPO's beta: how far the policy may move from the reference"})
    loss_type: str = field(default="sigmoid", metadata={"help": " | ".join(LOSS_TYPES)})
    gamma: float = field(default=0.0, metadata={"help": "weight of an SFT term on the chosen answer"})

    def _refusals(self) -> list[str]:
        refusals = super()._refusals()
        if self.loss_type not in LOSS_TYPES:
            refusals.append(f"--loss_type {self.loss_type}: choose one of {', '.join(LOSS_TYPES)}")
        return refusals


def rename_old_flags(argv: list[str]) -> list[str]:
    renamed = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        renamed.append(RENAMED_FLAGS.get(flag, flag) + equals + value)
    return renamed


def check_arguments(model_args: ModelArguments, training_args: PostDecoderTrainingArguments) -> list[str]:
    """What needs the model and training arguments together; returns notes to print.

    One change: a block or head run turns activation (gradient) checkpointing off in `training_args`,
    and its note says so. The frozen backbone keeps no activations to recompute, and the Trainer would
    ask the preference wrapper, which has no such switch, to checkpoint."""
    notes = []
    if model_args.lora_enable and training_args.backbone_cache is not None:
        refuse(
            [
                f"--backbone_cache {training_args.backbone_cache} with --lora_enable: LoRA trains the backbone, so "
                "its outputs change at every step and cannot be cached; drop --backbone_cache for the LoRA baseline"
            ]
        )
    checkpointing = activation_checkpointing_field()  # gradient_checkpointing before transformers 5.24
    if not model_args.lora_enable and (training_args.gradient_checkpointing or getattr(training_args, checkpointing)):
        notes.append(
            "--gradient_checkpointing True: turned off for this run (the block and lm_head train on a frozen "
            "backbone, which keeps no activations to recompute)"
        )
        training_args.gradient_checkpointing = False
        setattr(training_args, checkpointing, False)
    return notes
