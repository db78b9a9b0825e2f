"""Tiny Qwen-VL models for the Qwen-VL tests: our model on a plain tiny model's weights, images of different
sizes, and prompts padded into one batch (the same calls the product makes: `family.image_inputs`, ...)."""

import numpy as np
import torch
from PIL import Image

from post_decoder import PostDecoderConfig
from post_decoder.families.qwen_vl.tiny import TINY, make_tiny_qwen_vl, save_hub_layout, train_tiny_qwen_tokenizer
from post_decoder.family import family_for
from tests.helpers import add_noise, pad_rows

VERSIONS = tuple(TINY)  # qwen2_vl, qwen2_5_vl, qwen3_vl


def ours(plain, post_decoder=None, perturb=0.0, seed=0):
    """Our model class on `plain`'s weights (the family's config), with a new block when `post_decoder` (a variant
    name or a PostDecoderConfig) is given, moved off its identity start when `perturb`."""
    family = family_for(plain)
    model = family.model_class(family.with_block(plain.config))
    model.load_state_dict(plain.state_dict())
    if post_decoder is not None:
        if isinstance(post_decoder, str):
            post_decoder = PostDecoderConfig(variant=post_decoder)
        model.attach_post_decoder(post_decoder)
        if perturb:
            add_noise(model.post_decoder, perturb, seed)
    return model.eval()


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def batch(model, tokenizer, image_processor, samples, padding_side="left"):
    """`samples`: (question, [PIL images]) pairs; each image goes before its question in the user turn. Returns the
    model's keyword inputs (ids, mask, the images' inputs, M-RoPE positions) and each image's token count."""
    family, config = family_for(model), model.config
    images = [image for _, pictures in samples for image in pictures]
    image_inputs = family.image_inputs(images, image_processor) if images else {}
    counts = family.image_token_counts(config, image_inputs) if images else []
    rows = []
    for question, pictures in samples:
        conversation = family.conversation()
        for _ in pictures[:-1]:  # several images: each in a turn of its own before the question's
            conversation.add_user("", with_image=True)
        conversation.add_user(question, with_image=bool(pictures)).add_assistant(None)
        own, counts_left = counts[: len(pictures)], counts[len(pictures) :]
        rows.append(family.tokenize_prompt(conversation.prompt(), tokenizer, config, image_tokens=own))
        counts = counts_left
    input_ids, attention_mask = pad_rows(rows, padding_side, tokenizer.pad_token_id)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **image_inputs}
    inputs["position_ids"] = family.prompt_position_ids(model, input_ids, attention_mask, image_inputs or None)
    return inputs


class TinyQwen:
    """One version's tiny world: the tokenizer, the plain transformers model, its folder in the hub layout, and
    the image processor read from that folder (as `load_pretrained_model` reads it)."""

    def __init__(self, version: str, root):
        from post_decoder.families.qwen_vl.loading import load_image_processor

        self.version = version
        self.tokenizer = train_tiny_qwen_tokenizer(with_system=version != "qwen3_vl")
        self.plain = make_tiny_qwen_vl(version, self.tokenizer)
        self.folder = save_hub_layout(self.plain, self.tokenizer, version, str(root / version))
        self.processor = load_image_processor(self.folder)

    def plain_logits(self, inputs) -> torch.Tensor:
        """The plain model's own logits: its own M-RoPE positions, from the processor's `mm_token_type_ids`."""
        inputs = {key: value for key, value in inputs.items() if key != "position_ids"}
        image_tokens = (inputs["input_ids"] == self.plain.config.image_token_id).int()
        with torch.no_grad():
            return self.plain(**inputs, mm_token_type_ids=image_tokens).logits
