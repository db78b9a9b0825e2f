"""MiniGPT-4's config: transformers' BLIP-2 config (EVA ViT-g vision model, Q-Former, a Llama text config) with
which MiniGPT-4 it is and an optional block.

MiniGPT-4 comes in two shapes (Vision-CAIR/MiniGPT-4, minigpt4/models/minigpt4.py):
  - Vicuna (`pretrain_vicuna0`): the image's ViT features, after `ln_vision`, go through BLIP-2's Q-Former (32
    queries); `llama_proj` maps each query output (768) to the LLM's width: transformers' `language_projection`.
  - Llama-2-chat (`pretrain_llama2`, the one HA-DPO trains): no Q-Former (`has_qformer: False`); the 256 patch
    features after `ln_vision` (CLS dropped) are taken four neighbours at a time (256 x 1408 -> 64 x 5632) and
    `llama_proj` maps each group to the LLM's width: 64 image tokens.
"""

from transformers import Blip2Config

from ...configs_with_block import config_class_with_block

GROUPED_PATCHES = 4  # the Llama-2 version concatenates this many neighbouring patch features per image token


class MiniGPT4Config(config_class_with_block(Blip2Config)):
    """`Blip2Config` with a Llama `text_config`, `has_qformer` (False: the Llama-2 version) and an optional
    `post_decoder_config` (None: the plain MiniGPT-4)."""

    model_type = "minigpt4"
    has_qformer: bool = True
    # MiniGPT-4's `ln_vision` is torch's LayerNorm (eps 1e-5); BLIP-2's config has one eps (EVA's 1e-6) for every norm.
    ln_vision_eps: float = 1e-5

    @property
    def image_seq_length(self) -> int:
        """Image tokens per image in the prompt: the Q-Former's queries, or the grouped patches."""
        if self.has_qformer:
            return self.num_query_tokens
        vision = self.vision_config
        return (vision.image_size // vision.patch_size) ** 2 // GROUPED_PATCHES

    @property
    def projector_input_size(self) -> int:
        """`llama_proj`'s input width: the Q-Former's (768) or four ViT features side by side (5632)."""
        if self.has_qformer:
            return self.qformer_config.hidden_size
        return GROUPED_PATCHES * self.vision_config.hidden_size
