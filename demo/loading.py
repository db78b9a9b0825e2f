"""The models the page compares: the trained one, and a base to set beside it.

The base is a second checkpoint when one is given. Otherwise, when the trained model has a block,
it is the same model with the block bypassed: a model object without a block whose backbone and
`lm_head` are the trained model's own modules (shared, not copied), so it costs no memory. If
training changed `lm_head` (stage 2), that base is not the original model, and the page says so.
"""

import os
from dataclasses import dataclass

import torch

from ha_dpo.toy import DEFAULT_CHECKPOINT
from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.family import family_for


@dataclass
class LoadedModel:
    label: str  # what the page calls it: says where it came from
    tokenizer: object
    model: torch.nn.Module  # a family's model class (`post_decoder.family`)
    image_processor: object
    context_len: int
    bypassed: bool = False  # the trained model with its block bypassed

    @property
    def has_block(self) -> bool:
        return self.model.post_decoder is not None

    def conversation(self):
        """An empty conversation in the model's own template (a Vicuna MiniGPT-4's differs from a Llama-2 one's)."""
        family = family_for(self.model)
        return family.conversation(family.default_conv_mode_for(self.model.config))

    @property
    def multi_turn(self) -> bool:
        """Whether the model's template takes a second question after an answer (InstructBLIP's takes one)."""
        conversation = self.conversation()
        try:
            conversation.add_user("", with_image=True).add_assistant("").add_user("")
        except InputError:
            return False
        return True

    @property
    def context_limit(self) -> int:
        """Prompt plus answer tokens: the builder's context length, within the position embeddings."""
        return min(self.context_len, self.model.config.text_config.max_position_embeddings)


def short_name(path: str) -> str:
    """What the page calls a model: the toy world's base model by that name, another local folder by its
    last component, a hub id as it is."""
    if os.path.realpath(path) == os.path.realpath(DEFAULT_CHECKPOINT):
        return "toy base model"
    if os.path.isdir(path):
        return os.path.basename(os.path.normpath(os.path.abspath(path)))
    return path


def load_model(
    path: str,
    model_base: str | None,
    label: str,
    device: str | None,
    dtype: torch.dtype | None,
    image_options: dict | None = None,
) -> LoadedModel:
    """`image_options`: the image processor's `min_pixels` / `max_pixels` (Qwen-VL's; a family with one image size
    refuses them), only those set."""
    tokenizer, model, image_processor, context_len = load_pretrained_model(
        path, model_base=model_base, device=device, dtype=dtype, **(image_options or {})
    )
    return LoadedModel(label, tokenizer, model, image_processor, context_len)


def block_bypassed(trained: LoadedModel) -> LoadedModel:
    """The trained model without its block: its backbone and `lm_head` modules, shared."""
    base = family_for(trained.model).block_bypassed(trained.model)
    label = f"{trained.label}, block bypassed"
    return LoadedModel(
        label, trained.tokenizer, base.eval(), trained.image_processor, trained.context_len, bypassed=True
    )


def load_models(
    model_path: str,
    model_base: str | None = None,
    base_model_path: str | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    labels: tuple[str, str] | None = None,
    image_options: dict | None = None,
) -> tuple[LoadedModel, LoadedModel | None]:
    """(trained, base). The base is None when none is given and the trained model has no block.
    `labels` (trained, base) replace the names made from the folders' last components. `image_options`: see
    `load_model` (both models get them)."""
    trained_label = (
        short_name(model_path) if model_base is None else f"{short_name(model_path)} on {short_name(model_base)}"
    )
    trained = load_model(model_path, model_base, trained_label, device, dtype, image_options)
    if base_model_path is not None:
        base = load_model(base_model_path, None, short_name(base_model_path), device, dtype, image_options)
    elif trained.has_block:
        base = block_bypassed(trained)
    else:
        base = None
    if labels is not None:
        trained.label = labels[0]
        if base is not None:
            base.label = labels[1]
    return trained, base
