"""Command-line arguments of the training scripts, with HA-DPO's and LLaVA's names.

Every flag of HA-DPO's README commands is accepted, and each is either used or refused with a
message saying why (HA-DPO silently ignored some). `check_arguments` does the refusing and returns
notes for flags that are accepted but have nothing to do in this run.
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from post_decoder import VARIANTS
from post_decoder.compat import activation_checkpointing_field
from post_decoder.errors import InputError
from post_decoder.family import conv_modes, default_conv_mode

from ..objective.dpo_loss import LOSS_TYPES

CONV_MODE_HELP = (
    "LLaVA's prompt template of the samples: vicuna_v1 (LLaVA-1.5's own training template; HA-DPO trained "
    "LLaVA-1.5 with it, as --version v1) or llava_v1 (HA-DPO's POPE evaluation of LLaVA-1.5 used it)"
)
SFT_CONV_MODE_HELP = (
    "LLaVA's prompt template of the samples: vicuna_v1 (LLaVA-1.5's own training template) or llava_v1"
)

# transformers 5 renamed these; HA-DPO's and LLaVA's commands still use the old names
# (`--warmup_steps` reads a float below 1 as the ratio of all steps).
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "any checkpoint post_decoder.builder.load_pretrained_model opens"}
    )
    version: str = field(default="v1", metadata={"help": "HA-DPO's flag, v1 only; the template is --conv_mode's"})
    vision_tower: str | None = field(default=None, metadata={"help": "must name the checkpoint's own tower if given"})
    mm_projector_type: str | None = field(
        default=None, metadata={"help": "checked against the checkpoint (mlp2x_gelu)"}
    )
    mm_vision_select_layer: int | None = field(default=None, metadata={"help": "checked against the checkpoint"})
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
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
    post_decoder_num_layers: int = 1
    lora_enable: bool = field(default=False, metadata={"help": "HA-DPO's baseline: LoRA on the LLM's linear layers"})
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_bias: str = "none"
    mm_projector_lr: float | None = None


@dataclass
class PreferenceDataArguments:
    vg_path: str | None = field(
        default=None, metadata={"help": "Visual Genome folder: image_data.json, VG_100K/, VG_100K_2/"}
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
    lazy_preprocess: bool = field(default=True, metadata={"help": "images are always read lazily"})
    conv_mode: str = field(default=default_conv_mode(), metadata={"help": CONV_MODE_HELP, "choices": conv_modes()})


@dataclass
class SupervisedDataArguments:
    data_path: str = field(metadata={"help": "LLaVA instruction json: [{id, image?, conversations}, ...]"})
    image_folder: str = field(default="", metadata={"help": "folder the samples' `image` paths are relative to"})
    keep_text_only: bool = field(
        default=True, metadata={"help": "keep samples without an image (the block passes them through)"}
    )
    strict: bool = field(default=False, metadata={"help": "stop at the first bad sample instead of skipping it"})
    image_aspect_ratio: str = field(default="pad", metadata={"help": "LLaVA-1.5's 'pad' only"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "images are always read lazily"})
    is_multimodal: bool = field(
        default=True, metadata={"help": "LLaVA's flag; samples say themselves whether they have an image"}
    )
    conv_mode: str = field(
        default=default_conv_mode(), metadata={"help": SFT_CONV_MODE_HELP, "choices": conv_modes()}
    )


@dataclass
class PostDecoderTrainingArguments(TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "prompt + answer tokens; answers are cut to fit"})
    group_by_modality_length: bool = False
    remove_unused_columns: bool = False  # the batches are ours, not the model forward's signature
    plot: bool = field(default=True, metadata={"help": "write training_curves.png at the end"})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "train into an --output_dir that holds another run's files (its results are replaced only "
            "when this run's final save is complete); without it such a folder is refused"
        },
    )


@dataclass
class PreferenceTrainingArguments(PostDecoderTrainingArguments):
    beta: float = 0.1
    loss_type: str = field(default="sigmoid", metadata={"help": " | ".join(LOSS_TYPES)})
    gamma: float = field(default=0.0, metadata={"help": "weight of an SFT term on the chosen answer"})


def rename_old_flags(argv: list[str]) -> list[str]:
    renamed = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        renamed.append(RENAMED_FLAGS.get(flag, flag) + equals + value)
    return renamed


def check_arguments(
    model_args: ModelArguments, training_args: PreferenceTrainingArguments, image_aspect_ratio="pad"
) -> list[str]:
    """Refuse what this code cannot do; return notes on flags that have nothing to do here."""
    refusals, notes = [], []
    if model_args.version != "v1":
        refusals.append(
            f"--version {model_args.version}: keep v1 (HA-DPO's flag) and pick the template with --conv_mode"
        )
    if model_args.mm_use_im_start_end or model_args.mm_use_im_patch_token:
        refusals.append("--mm_use_im_start_end / --mm_use_im_patch_token: LLaVA-1.5 uses neither")
    if model_args.mm_projector_type not in (None, "mlp2x_gelu"):
        refusals.append(f"--mm_projector_type {model_args.mm_projector_type}: LLaVA-1.5's projector is mlp2x_gelu")
    if image_aspect_ratio != "pad":
        refusals.append(f"--image_aspect_ratio {image_aspect_ratio}: only LLaVA-1.5's 'pad' is implemented")
    if getattr(training_args, "loss_type", "sigmoid") not in LOSS_TYPES:
        refusals.append(f"--loss_type {training_args.loss_type}: choose one of {', '.join(LOSS_TYPES)}")
    if model_args.post_decoder_variant not in (None, *VARIANTS):
        refusals.append(
            f"--post_decoder_variant {model_args.post_decoder_variant}: choose one of {', '.join(VARIANTS)}"
        )
    if training_args.group_by_modality_length:
        refusals.append(
            "--group_by_modality_length True: not implemented (every preference pair has an image); drop the flag"
        )

    shared = model_args.tune_post_decoder or model_args.tune_lm_head
    if model_args.lora_enable:
        if shared:
            refusals.append(
                "--lora_enable with --tune_post_decoder/--tune_lm_head: train LoRA or the head, not both in one run"
            )
        if model_args.mm_projector_lr is not None and not model_args.tune_mm_mlp_adapter:
            refusals.append("--mm_projector_lr needs --tune_mm_mlp_adapter True")
        if model_args.mm_projector_lr is not None:
            refusals.append("--mm_projector_lr: a separate projector learning rate is not implemented; drop the flag")
    else:
        if not shared:
            refusals.append(
                "nothing to train: pass --tune_post_decoder True, --tune_lm_head True or --lora_enable True"
            )
        if not model_args.freeze_backbone:
            refusals.append("--freeze_backbone False: the block and lm_head are trained on a frozen, shared backbone")
        if model_args.tune_mm_mlp_adapter:
            refusals.append(
                "--tune_mm_mlp_adapter True: the projector is part of the shared frozen backbone; use --lora_enable"
            )
        checkpointing = activation_checkpointing_field()  # gradient_checkpointing before transformers 5.24
        if training_args.gradient_checkpointing or getattr(training_args, checkpointing):
            notes.append("--gradient_checkpointing: not needed, the frozen backbone runs without keeping activations")
            training_args.gradient_checkpointing = False
            setattr(training_args, checkpointing, False)
        for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_bias", "mm_projector_lr"):
            if getattr(model_args, name) != ModelArguments.__dataclass_fields__[name].default:
                refusals.append(f"--{name} is for --lora_enable True runs")
    if model_args.post_decoder_variant is not None and not model_args.tune_post_decoder:
        refusals.append("--post_decoder_variant needs --tune_post_decoder True")
    if refusals:
        raise InputError("refused: " + "; ".join(refusals))
    return notes
