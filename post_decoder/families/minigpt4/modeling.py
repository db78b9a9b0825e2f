"""MiniGPT-4 as transformers' `Blip2ForConditionalGeneration` (Llama language model), with a post-interaction block
between the language model's final norm and its `lm_head`.

The only glue beyond BLIP-2's own modules: the Llama-2 version has no Q-Former, so its image tokens are the ViT's
patch features four at a time through `language_projection` (MiniGPT-4's `llama_proj`), and `generate` runs its
steps on this model (BLIP-2's own `generate` hands the prompt to the inner language model, which would skip the
block): the block's state rides from step to step with the KV cache, as for LLaVA.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Blip2ForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...block import PostDecoderState
from ...compat import output_cache
from ...family import BackboneOutput, pack_images_per_sample
from ...wrapped_model import GenerateOnThisModel, PostDecoderMixin
from .configuration import MiniGPT4Config


@dataclass
class MiniGPT4PostDecoderOutput(CausalLMOutputWithPast):
    """The language model's output plus the block's state (pass it back with the KV cache) and, if asked, its
    cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


class MiniGPT4ForConditionalGeneration(PostDecoderMixin, GenerateOnThisModel, Blip2ForConditionalGeneration):
    """MiniGPT-4 whose logits are `lm_head(block(h, v))`; with `config.post_decoder_config = None`, the plain
    MiniGPT-4 (for the Vicuna version: exactly transformers' `Blip2ForConditionalGeneration`'s logits).

    `input_ids` hold `config.image_token_id` once per image token (`config.image_seq_length` per image: 32 queries,
    or 64 groups of patches for the Llama-2 version); `pixel_values` [I, 3, 224, 224] their images, in order."""

    config_class = MiniGPT4Config

    def __init__(self, config: MiniGPT4Config):
        super().__init__(config)
        self.vision_model.post_layernorm.eps = config.ln_vision_eps
        if not config.has_qformer:  # the Llama-2 version: no Q-Former, a wider projection
            del self.qformer
            del self.query_tokens
            self.register_parameter("query_tokens", None)
            self.language_projection = nn.Linear(config.projector_input_size, config.text_config.hidden_size)
            self.post_init()

    def _init_weights(self, module):
        if module is self and self.query_tokens is None:
            return  # all BLIP-2 initialises on the model itself is the Q-Former's queries, which this one lacks
        super()._init_weights(module)

    @property
    def lm_head(self) -> nn.Linear:
        return self.language_model.lm_head

    # --- the backbone (see post_decoder/family.py) ---

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ViT's features after `ln_vision` [I, 257, 1408]: BLIP-2's `vision_model(...).last_hidden_state`,
        the projected image tokens [I, image_seq_length, D]), as MiniGPT-4's `encode_img` computes them."""
        vision = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        if self.config.has_qformer:
            queries = self.query_tokens.expand(vision.shape[0], -1, -1)
            image_mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)
            tokens = self.qformer(
                query_embeds=queries, encoder_hidden_states=vision, encoder_attention_mask=image_mask, return_dict=True
            ).last_hidden_state
        else:
            patches = vision[:, 1:]  # the CLS feature dropped; then each run of four patches side by side
            tokens = patches.reshape(patches.shape[0], -1, self.config.projector_input_size)
        tokens = tokens.to(self.language_projection.weight.dtype)  # BLIP-2 keeps its Q-Former in fp32
        return vision, self.language_projection(tokens)

    def backbone_forward(
        self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs
    ) -> BackboneOutput:
        """One pass of the vision model and the language model: h, v (+ mask), the KV cache. The cache goes in
        `kwargs` under `compat.CACHE_KWARG` (its name depends on transformers)."""
        vision_features, vision_mask = None, None
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("with an image, pass input_ids: its image tokens say where the image goes")
            vision, projected = self.encode_images(pixel_values)
            image_positions = input_ids == self.config.image_token_id
            if int(image_positions.sum()) != projected.shape[0] * projected.shape[1]:
                raise ValueError(
                    f"input_ids hold {int(image_positions.sum())} image tokens for {projected.shape[0]} image(s) of "
                    f"{projected.shape[1]} tokens each"
                )
            by_projector = self.post_decoder is not None and self.post_decoder.config.vision_source == "projector"
            per_image = projected if by_projector else vision
            images_per_sample = image_positions.sum(dim=1) // projected.shape[1]
            vision_features, vision_mask = pack_images_per_sample(per_image, images_per_sample * per_image.shape[1])
            projected = projected.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(image_positions.unsqueeze(-1), projected)
        outputs = self.language_model.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return BackboneOutput(outputs.last_hidden_state, vision_features, vision_mask, output_cache(outputs))

    # --- forward (generation: PostDecoderMixin) ---

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        logits_to_keep=0,
        post_decoder_state: PostDecoderState | None = None,
        output_post_decoder_attentions: bool = False,
        **kwargs,
    ) -> MiniGPT4PostDecoderOutput:
        """The image goes in on the prompt's step only; with a KV cache, pass the returned `post_decoder_state`
        back on the next call (generate() does this): it holds the block's encoded image."""
        kwargs.pop("return_dict", None)
        backbone_inputs = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return self.block_forward(
            backbone_inputs,
            labels,
            logits_to_keep,
            post_decoder_state,
            output_post_decoder_attentions,
            MiniGPT4PostDecoderOutput,
        )
