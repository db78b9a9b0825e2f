"""The interface between a backbone family and everything else, and the registry that picks a family.

The block, the trainer, POPE, the demo and `replace_bin` never ask which family a model is: they ask
`family_for(model)` (or a config, a `model_type`, a checkpoint's config.json) and call its methods.

A new family (Qwen2.5-VL, InstructBLIP, ...) is one sub-package, `post_decoder/families/<name>/`,
that registers an instance of a `BackboneFamily` subclass (`register_family`) and is imported by
`post_decoder/families/__init__.py`. Checklist, with LLaVA's answers in `families/llava/`:

  [ ] configuration: the backbone's config class with an optional `post_decoder_config`
      (None: the plain model), and `block_sizes` (text width, heads, MLP width, vision width);
  [ ] modeling: the model class. `backbone_forward` returns a `BackboneOutput` (h before the head,
      each sample's vision features with a mask of any length: `pack_images_per_sample`, the KV cache);
      `forward` is `lm_head(block(h, v))`; `attach_post_decoder`; the attribute `post_decoder` (None:
      no block); `generate` runs its steps on the model's own forward, so the block's state rides with the
      KV cache (`PostDecoderMixin`; a BLIP-style model adds `GenerateOnThisModel`);
  [ ] positions: `prompt_position_ids` (a left-padded prompt's, from its tokens and images: 1-D RoPE for
      LLaVA, 3-D M-RoPE for Qwen-VL, whose image positions follow each image's grid) and
      `continued_position_ids` (tokens continuing a cached prompt, numbered on from that prompt's positions,
      never from its mask alone);
  [ ] images: `image_inputs` (a batch's PIL images -> the model's keyword inputs), `image_token_counts`
      (each image's placeholder count, read from those inputs), `image_token_count` (one image's count
      without its pixels: for data length checks), `vision_rows_per_image` (the block's rows of one image),
      `prompt_inputs` (inputs read from each image's question: InstructBLIP's Q-Former tokens),
      `prompt_prefix_is_shared` and `encoded_image_inputs` (for POPE),
      `vision_grid` and `vision_rows_in_raster` (where the block's vision rows lie on their image, for pictures
      of where it looked);
  [ ] the prompt: `conv_modes`, `default_conv_mode`, `prompt_module` (its `conversation.py`, whose
      `Conversation.for_mode`, `question_prompt` and `tokenize_with_image` the family's methods call),
      `image_token_id`;
  [ ] loading: `claims` (a checkpoint's config.json), `load` (tokenizer, model, image processor; image options
      such as Qwen-VL's `min_pixels`/`max_pixels` for a family whose processor takes them);
  [ ] `lora_targets` and `modules_trained_with_lora` (the projector under --tune_mm_mlp_adapter);
  [ ] `key_layout`: the checkpoint key layouts it reads and rewrites (`KeyLayout`), `head_key`,
      `backbone_config` and `config_with_block` for replace_bin;
  [ ] tiny models for tests beside it (`families/<name>/tiny.py`), never imported by the product.
"""

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType

import torch
from transformers import Cache

from .errors import InputError
from .images import preprocess_images

DEFAULT_FAMILY = "llava"  # the model_type whose family answers when nothing names one (a CLI's default template)


@dataclass
class BackboneOutput:
    hidden_states: torch.Tensor  # [B, T, D], after the backbone's final norm
    vision_features: torch.Tensor | None  # [B, N, Dv]; None when no image was passed in this call
    vision_mask: torch.Tensor | None  # [B, N] bool, True where a vision position is real
    past_key_values: Cache | None = None


def pack_images_per_sample(
    image_features: torch.Tensor | list[torch.Tensor], image_tokens_per_sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group per-image features by sample, in order, given each sample's image-token count.

    image_features: [I, N, Dv] (every image N tokens, as LLaVA's), or a list of I tensors [N_i, Dv]
    (Qwen-VL's counts vary with the image). Returns [B, L, Dv] and a mask [B, L], L the longest
    sample's total; a sample with no image gets an all-False mask row (the block leaves it unchanged).
    """
    uniform = isinstance(image_features, torch.Tensor)
    images = list(image_features)
    if not images:
        raise ValueError("no image features to pack: call this only when the batch has images")
    lengths = [len(image) for image in images]
    counts = image_tokens_per_sample.tolist()
    per_sample, start = [], 0
    for count in counts:  # each sample takes the next images until its token count is filled
        end, filled = start, 0
        while filled < count and end < len(images):
            filled, end = filled + lengths[end], end + 1
        if filled != count:
            break
        per_sample.append(range(start, end))
        start = end
    if len(per_sample) != len(counts) or start != len(images):
        shapes = f"{len(images)} image(s) of {lengths[0]} tokens each" if uniform else f"images of {lengths} tokens"
        raise ValueError(f"image tokens per sample {counts} do not match {shapes}")
    width = images[0].shape[-1]
    longest = max(max(counts), lengths[0] if uniform else 1)  # LLaVA's: at least one image wide, as before
    packed = images[0].new_zeros(len(counts), longest, width)
    mask = torch.zeros(len(counts), longest, dtype=torch.bool, device=images[0].device)
    for sample, indices in enumerate(per_sample):
        if len(indices):
            features = torch.cat([images[index] for index in indices])
            packed[sample, : len(features)] = features
            mask[sample, : len(features)] = True
    return packed, mask


def patch_grid(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """(rows, columns) of a ViT's patches over `pixel_values` [..., H, W]."""
    return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size


def next_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: the position the token after each row's prompt takes: its largest real position (on any axis of
    [A, B, P] positions) + 1. `attention_mask` [B, P] (or [B, more]: its last P columns are the prompt's)."""
    positions = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
    real = attention_mask[:, -positions.shape[-1] :].bool().unsqueeze(0).expand_as(positions)
    return positions.masked_fill(~real, -1).amax(dim=(0, 2)) + 1


def continue_positions(attention_mask: torch.Tensor, start: torch.Tensor, axes: int | None = None) -> torch.Tensor:
    """Positions of the tokens `attention_mask` [B, T] covers, row b numbered on from `start[b]` (left padding
    takes the first real token's position): [B, T], or [axes, B, T] with the same numbers on every axis."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + start.to(attention_mask.device).view(-1, 1)
    return positions if axes is None else positions.unsqueeze(0).expand(axes, -1, -1).contiguous()


@dataclass(frozen=True)
class KeyLayout:
    """One way a family's checkpoints name their tensors: prefix renames to and from our model's names
    (`model.state_dict()`); the first row whose prefix matches wins, a name no row matches is kept."""

    name: str
    to_ours_prefixes: tuple[tuple[str, str], ...] = ()  # (checkpoint prefix, our prefix)

    def to_ours(self, key: str) -> str:
        for theirs, ours in self.to_ours_prefixes:
            if key.startswith(theirs):
                return ours + key[len(theirs) :]
        return key

    def to_checkpoint(self, ours_key: str) -> str:
        for theirs, ours in self.to_ours_prefixes:
            if ours_key.startswith(ours):
                return theirs + ours_key[len(ours) :]
        return ours_key


class BackboneFamily(ABC):
    """What a backbone family provides (see the checklist above). One instance per family, registered."""

    name: str  # what messages call it, e.g. "LLaVA-1.5"
    model_types: tuple[str, ...]  # config.json `model_type`s it reads: its own and the plain backbone's
    config_class: type
    model_class: type
    conv_modes: dict[str, str]  # the prompt templates it knows, by name
    default_conv_mode: str
    head_key: str = "lm_head.weight"  # the head's tensor in our names (stage 0 and 2 replace it)
    # Sub-folders a model folder is made of besides its files (InstructBLIP's `qformer_tokenizer/`): a merge into a
    # new folder must copy them.
    model_folders: tuple[str, ...] = ()

    # --- sizes ---

    @abstractmethod
    def block_sizes(self, config, vision_source: str) -> dict[str, int]:
        """`hidden_size`, `vision_hidden_size` (of `vision_source`'s features), `num_attention_heads`,
        `intermediate_size` of the backbone: what a block's unset sizes become."""

    # --- positions ---

    def position_ids(
        self, attention_mask: torch.Tensor, past_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """1-D RoPE's position ids [B, T] of the tokens `attention_mask` [B, T] covers (left padding takes the first
        real token's position), after a cached prompt whose mask is `past_attention_mask` [B, P]. A shortcut for
        families whose positions are the count of real tokens (LLaVA); code for any family calls
        `prompt_position_ids` and `continued_position_ids`."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if past_attention_mask is not None:
            positions = positions + past_attention_mask.long().sum(-1, keepdim=True)
        return positions

    def prompt_position_ids(
        self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_inputs: dict | None = None
    ) -> torch.Tensor:
        """Position ids of a (left-padded) prompt, as the model's forward takes them: [B, T] for 1-D RoPE (this
        default: the count of real tokens before each one), [3, B, T] for Qwen-VL's M-RoPE (from `input_ids`'
        image placeholders and `image_inputs`' grids). `image_inputs`: what `image_inputs` gave for the prompt's
        images, in order (None: no image)."""
        return self.position_ids(attention_mask)

    def continued_position_ids(
        self, attention_mask: torch.Tensor, prompt_position_ids: torch.Tensor, prompt_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Position ids of the tokens `attention_mask` [B, T] covers when they continue a cached prompt whose
        positions were `prompt_position_ids` ([B, P] or [A, B, P], what `prompt_position_ids` gave) and mask
        `prompt_attention_mask` [B, P]: each row numbered on from its prompt's largest real position + 1, on every
        axis (left padding takes the first real token's position). The shape follows the prompt's: [B, T] or
        [A, B, T]. Correct for any family whose text positions advance by one on every axis (LLaVA, Qwen-VL)."""
        axes = prompt_position_ids.shape[0] if prompt_position_ids.dim() == 3 else None
        start = next_positions(prompt_position_ids, prompt_attention_mask)
        return continue_positions(attention_mask, start, axes)

    # --- the prompt ---

    def default_conv_mode_for(self, config) -> str:
        """The template a model of this config answers in when none is named (callers that have a model use this,
        not `default_conv_mode`): this default, `default_conv_mode`; MiniGPT-4's by its version."""
        return self.default_conv_mode

    prompt_module: ModuleType  # the family's `conversation.py`: `Conversation.for_mode`, `question_prompt`, ...

    def conversation(self, conv_mode: str | None = None):
        """An empty conversation (`add_user(text, with_image)`, `add_assistant(text or None)`, `prompt()`)."""
        return self.prompt_module.Conversation.for_mode(conv_mode or self.default_conv_mode)

    def question_prompt(
        self, question: str, with_image: bool = True, suffix: str = "", conv_mode: str | None = None
    ) -> str:
        """The single-turn prompt POPE and the demo send, open for the answer."""
        return self.prompt_module.question_prompt(question, with_image, suffix, conv_mode or self.default_conv_mode)

    def tokenize_with_image(self, prompt: str, tokenizer, image_token_id: int, image_tokens: int | list[int]):
        """Token ids of `prompt`, each image placeholder expanded to `image_tokens` ids (a list: one count per
        image, in order). Data code tokenizes with 1 and expands later."""
        return self.prompt_module.tokenize_with_image(prompt, tokenizer, image_token_id, image_tokens)

    def tokenize_prompt(
        self,
        prompt: str,
        tokenizer,
        config,
        images: list | None = None,
        image_processor=None,
        image_tokens: list[int] | None = None,
    ) -> list[int]:
        """Token ids of `prompt` as the model takes them, each image placeholder expanded to its image's count:
        `image_tokens` (from `image_token_counts`, the counts the model will check) when given, else each of
        `images`' `image_token_count` (under `image_processor`'s resize rule), else the count of an image not yet
        seen (which a family whose count varies refuses)."""
        if image_tokens is None:
            if images is None:
                image_tokens = self.image_token_count(config)
            else:
                image_tokens = [self.image_token_count(config, image, image_processor) for image in images]
        return self.tokenize_with_image(prompt, tokenizer, self.image_token_id(config), image_tokens)

    def image_token_id(self, config) -> int:
        """The id that marks image positions in `input_ids`."""
        return config.image_token_id

    @abstractmethod
    def image_token_count(self, config, image=None, image_processor=None) -> int:
        """How many tokens `image` (a PIL image) takes in the prompt, found without computing its pixels (data
        length checks); None: the count for an image not yet seen, which a family whose count varies refuses.
        `image_processor`: the family's processor (a family whose count depends on its resize rule needs it)."""

    # --- images ---

    def image_inputs(self, images: list, image_processor) -> dict[str, torch.Tensor]:
        """One batch's PIL images (in order, every sample's) -> the keyword inputs the model's forward and
        `generate` take for them, on the CPU in float32: this default, `pixel_values` [I, 3, H, W] (LLaVA);
        Qwen-VL's flattened patches `pixel_values` [sum of patches, C*T*P*P] and `image_grid_thw` [I, 3].

        Every tensor holds its images' rows one after another along the first axis (image 0's rows, then image
        1's, ...; `prompt_inputs` likewise): the inputs of images repeated in order are each tensor repeated
        (`ha_dpo.data.collators.repeated_images` relies on it)."""
        return {"pixel_values": preprocess_images(images, image_processor)}

    def image_token_counts(self, config, image_inputs: dict) -> list[int]:
        """Each image's placeholder count in `image_inputs` (what `image_inputs` gave), in order: this default,
        `image_token_count(config)` for every row of `pixel_values`; Qwen-VL's from `image_grid_thw`."""
        return [self.image_token_count(config)] * len(image_inputs["pixel_values"])

    def vision_rows_per_image(self, config, image_tokens: int, vision_source: str) -> int:
        """How many vision rows the block reads for one image of `image_tokens` placeholders (`vision_source`'s
        features; what a backbone cache stores per image, so its disk estimate): this default, one per image token
        (LLaVA's projector maps each patch alone); Qwen-VL's tower has `spatial_merge_size**2` per token, the BLIP
        families' ViT its patches and CLS whatever the query count."""
        return image_tokens

    @abstractmethod
    def vision_grid(self, config, image_inputs: dict, vision_source: str) -> list[tuple[int, int] | None]:
        """Each image's grid of the block's vision rows (`vision_source`'s features; `image_inputs`: what
        `image_inputs` gave), in order: (rows, columns) of the image the rows cover in raster order, or None where
        they have no place on the image (a Q-Former's query outputs). The grid covers each image's LAST
        rows x columns vision rows: a leading CLS row (the BLIP families' ViT, LLaVA under `full`) is before it.
        A family whose rows are not in raster order says how they map to the grid."""

    def prompt_inputs(self, texts: list[str], processor) -> dict[str, torch.Tensor]:
        """Inputs the model takes per image from its prompt's text (`texts`: each image's question, with its suffix,
        as `question_prompt` puts it after the image), on the CPU; merged into the images' inputs. This default:
        none. InstructBLIP: its Q-Former's tokens of the question."""
        return {}

    prompt_prefix_is_shared: bool = True
    """Whether the prompts of an image's questions share their first tokens' KV cache (image included), so POPE
    computes that prefix once (LLaVA, Qwen-VL, MiniGPT-4); False where the image's tokens depend on the question
    (InstructBLIP's Q-Former reads it): POPE encodes the image once (`encoded_image_inputs`) and runs each batch of
    its questions whole."""

    def encoded_image_inputs(self, model, image_inputs: dict) -> dict[str, torch.Tensor]:
        """`image_inputs` (of images on `model`'s device) with the part that does not depend on the prompt already
        computed, for reuse across an image's questions, one row per image along dim 0 (repeat them for a batch of
        questions about one image). This default: `image_inputs` unchanged. InstructBLIP: the vision encoder's
        output, `image_embeds`."""
        return image_inputs

    def vision_rows_in_raster(self, config, image_inputs: dict, vision_source: str) -> list[list[int] | None]:
        """For each image, the indices of its grid's rows (the last rows x columns of `vision_grid`) in raster
        order, `order[r * columns + c]` being patch (r, c)'s row; None where they are in raster order already (this
        default: every family but Qwen-VL's pre-merger rows)."""
        return [None] * len(self.vision_grid(config, image_inputs, vision_source))

    # --- loading ---

    def claims(self, raw_config: dict) -> bool:
        """Whether a checkpoint with this config.json is one of this family's."""
        return raw_config.get("model_type") in self.model_types

    @abstractmethod
    def load(self, model_path: str, raw_config: dict, dtype: torch.dtype, device_map=None, **image_options):
        """(tokenizer, model, image_processor) of a full checkpoint of this family, block included if it has one.
        `image_options` (only when a caller sets one, e.g. Qwen-VL's `min_pixels`, `max_pixels`) go to its image
        processor; a family whose processor takes none refuses them with an InputError."""

    # --- training ---

    def checkpoint_flag_values(self, config) -> dict:
        """The checkpoint's own values of HA-DPO's LLaVA-1.5 model flags, which training checks the flags against
        (a flag this omits is a setting the model does not have, and is refused): `mm_vision_select_layer` (the
        tower's layer the projector reads), `vision_tower_shape` ((patch size, image size) of its CLIP tower). This
        default: none (LLaVA-1.5 answers both)."""
        return {}

    lora_targets: str  # PEFT's target_modules: the LLM's linear layers
    modules_trained_with_lora: tuple[str, ...] = ()  # submodule paths trained beside the adapters, if asked

    # --- checkpoint files (replace_bin) ---

    @abstractmethod
    def key_layout(self, raw_config: dict, keys: list[str], where: str) -> KeyLayout:
        """The key layout of a checkpoint of this family (config.json, its tensors' names); an InputError
        naming `where` for keys it cannot place."""

    @abstractmethod
    def backbone_config(self, raw_config: dict, folder: str):
        """The backbone config (what `block_sizes` reads) of a checkpoint folder."""

    @abstractmethod
    def config_with_block(self, raw_config: dict, block_values: dict) -> dict:
        """config.json of a checkpoint once a block (`block_values`, its config) is added to its files."""

    # --- generation and the block ---

    def block_bypassed(self, model):
        """The same model without its block: a new model object whose other modules are `model`'s own
        (shared, not copied), with `post_decoder = None` (the plain model's logits)."""
        base = copy.copy(model)  # a shallow copy: its own module table and config, the same modules
        base.__dict__.update(_modules=dict(model._modules), _parameters=dict(model._parameters))
        base.config = copy.deepcopy(model.config)
        base.config.post_decoder_config = None
        base.post_decoder = None
        return base


_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Make `family` the one for each of its `model_types` (a later registration of a type replaces it)."""
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def registered_families() -> list[BackboneFamily]:
    return list(dict.fromkeys(_FAMILIES.values()))


def family_for(thing) -> BackboneFamily:
    """The family of a model, a config, a config.json's dict, or a `model_type` string."""
    model_type = thing
    if not isinstance(thing, str):
        config = getattr(thing, "config", thing)
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise InputError(f"no backbone family reads model_type {model_type!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[model_type]


def family_for_checkpoint(raw_config: dict, where: str) -> BackboneFamily:
    """The family that claims a checkpoint's config.json; an InputError naming `where` if none does."""
    for family in registered_families():
        if family.claims(raw_config):
            return family
    names = " or ".join(family.name for family in registered_families())
    raise InputError(
        f"{where} is not a {names} checkpoint: config.json has model_type "
        f"{raw_config.get('model_type')!r} and architectures {raw_config.get('architectures')}"
    )


def conv_modes() -> list[str]:
    """Every registered family's prompt templates (a command's choices before a model is loaded)."""
    return list(dict.fromkeys(mode for family in registered_families() for mode in family.conv_modes))


def default_conv_mode() -> str:
    return family_for(DEFAULT_FAMILY).default_conv_mode


def family_for_conv_mode(conv_mode: str | None) -> BackboneFamily:
    """The family whose template `conv_mode` is (None: the default family), for code that has no model."""
    if conv_mode is None:
        return family_for(DEFAULT_FAMILY)
    for family in registered_families():
        if conv_mode in family.conv_modes:
            return family
    raise InputError(f"unknown conversation mode {conv_mode!r}: choose one of {', '.join(conv_modes())}")
