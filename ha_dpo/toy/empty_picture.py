"""The empty-picture check: the trained block is shown a picture with no object in it while the backbone
still sees the real image. A gain that goes away there came through what the block sees; a block that
cannot see the image (or an untouched identity) answers as before."""

from contextlib import contextmanager

import torch
from PIL import Image

from post_decoder.block import PostInteractionBlock
from post_decoder.builder import load_pretrained_model
from post_decoder.family import family_for
from post_decoder.images import preprocess_images

from .world import WorldConfig

BACKGROUND = (240, 240, 240)  # the toy world's backgrounds are drawn from 230-250 per channel


def empty_picture_features(base_model: str) -> torch.Tensor:
    """[1, N, Dv]: the vision features of an empty toy picture, as the block receives them."""
    tokenizer, model, image_processor, _ = load_pretrained_model(base_model, device="cpu", dtype=torch.float32)
    family, config, size = family_for(model), model.config, WorldConfig().image_size
    ids = family.tokenize_with_image(
        family.question_prompt("?"), tokenizer, family.image_token_id(config), family.image_token_count(config)
    )
    pixel_values = preprocess_images([Image.new("RGB", (size, size), BACKGROUND)], image_processor)
    with torch.no_grad():
        return model.backbone_forward(input_ids=torch.tensor([ids]), pixel_values=pixel_values).vision_features


@contextmanager
def block_shown_an_empty_picture(features: torch.Tensor):
    """Inside: every block encodes `features` (one picture's) in place of each sample's image."""
    encode_vision = PostInteractionBlock.encode_vision

    def sees_the_empty_picture(block, vision_features, vision_mask, batch_size):
        shown = None if vision_features is None else features.to(vision_features).expand(len(vision_features), -1, -1)
        return encode_vision(block, shown, vision_mask, batch_size)

    PostInteractionBlock.encode_vision = sees_the_empty_picture
    try:
        yield
    finally:
        PostInteractionBlock.encode_vision = encode_vision
