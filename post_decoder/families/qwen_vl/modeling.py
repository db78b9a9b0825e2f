"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL with a post-interaction block between the LLM backbone and `lm_head`.

Transformers' own classes, subclassed: the vision encoder runs once per call (its merged output goes into the
placeholders as the model's own forward puts it there, Qwen3-VL's deepstack features into the first layers),
and the language model always gets explicit M-RoPE positions. Qwen's models keep the prompt's `rope_deltas` on
the model object between calls; this code never reads or writes them: a prompt's positions come from its own
tokens and image grids (`prompt_position_ids`), a continuation's from the prompt's positions
(`BackboneFamily.continued_position_ids`), so no state leaks from one call (or one `generate`) into the next.

The block's vision features (`vision_source="vision_tower"`, the default) are the vision encoder's last block
output before the patch merger: merge_size**2 rows (4) per placeholder token, in the processor's patch order
(for each merged token in raster order, its merge_size x merge_size patches, row by row). Qwen2.5-VL's encoder
runs in window order; its output is put back in that order here. `vision_source="projector"`: the merger's
output, one row per placeholder token, raster order.
"""

from dataclasses import dataclass

import torch
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.vision_utils import get_vision_window_index

from ...block import PostDecoderState
from ...compat import CACHE_KWARG, output_cache
from ...family import BackboneOutput, pack_images_per_sample
from ...wrapped_model import PostDecoderMixin
from .configuration import Qwen2_5_VLPostDecoderConfig, Qwen2VLPostDecoderConfig, Qwen3VLPostDecoderConfig


@dataclass
class QwenVLPostDecoderOutput(CausalLMOutputWithPast):
    """The model's output plus the block's state (pass it back with the KV cache) and, if asked, its
    cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


class QwenVLPostDecoderMixin(PostDecoderMixin):
    """What the three versions share; before the transformers class in the bases."""

    # --- positions ---

    def prompt_position_ids(self, input_ids, attention_mask=None, image_grid_thw=None) -> torch.Tensor:
        """[3, B, T] M-RoPE positions of a (left-padded) prompt: text numbered one by one, each image's tokens by
        its grid (temporal, row, column) from where the text before it ends; padding 0."""
        image_tokens = (input_ids == self.config.image_token_id).int()
        if image_grid_thw is None and bool(image_tokens.any()):
            raise ValueError("input_ids hold image tokens but no image_grid_thw was passed: pass the image's inputs")
        positions, _ = self.model.get_rope_index(
            input_ids, image_tokens, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        return positions

    def _positions(self, input_ids, attention_mask, image_grid_thw, position_ids, kwargs) -> torch.Tensor:
        if position_ids is not None:
            return position_ids
        cache = kwargs.get(CACHE_KWARG)
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError(
                "continuing a cached prompt needs position_ids: the family's continued_position_ids numbers them on "
                "from the prompt's M-RoPE positions"
            )
        if input_ids is None:
            raise ValueError("pass input_ids (or position_ids): M-RoPE positions come from the image tokens")
        return self.prompt_position_ids(input_ids, attention_mask, image_grid_thw)

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """`generate` without position_ids: the prompt's own M-RoPE positions (never the model's stored
        `rope_deltas`); with a cache, position_ids must come with it."""
        input_ids = model_kwargs.get("input_ids")
        if input_ids is None or input_ids.shape[1] == 0:
            input_ids = inputs_tensor
        return self._positions(
            input_ids, model_kwargs.get("attention_mask"), model_kwargs.get("image_grid_thw"), None, model_kwargs
        )

    # --- the backbone (see post_decoder/family.py) ---

    def backbone_forward(
        self,
        input_ids=None,
        pixel_values=None,
        image_grid_thw=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        **kwargs,
    ) -> BackboneOutput:
        """One pass of the vision encoder and the language model: h, v (+ mask), the KV cache. The cache goes in
        `kwargs` under `compat.CACHE_KWARG`. Without position_ids (and no cache): the prompt's own."""
        kwargs.pop("mm_token_type_ids", None)  # the processor's; the image tokens in input_ids say the same
        position_ids = self._positions(input_ids, attention_mask, image_grid_thw, position_ids, kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        vision_features, vision_mask, image_kwargs = None, None, {}
        if pixel_values is not None:
            if input_ids is None or image_grid_thw is None:
                raise ValueError("with an image, pass input_ids and image_grid_thw: they place each image's tokens")
            image_outputs = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
            merged = torch.cat(image_outputs.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask, _ = self.model.get_placeholder_mask(input_ids, inputs_embeds, image_features=merged)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, merged)
            image_kwargs = self._image_kwargs_for_language_model(image_outputs, image_mask[..., 0])
            per_image, rows_per_token = self._block_vision_features(image_outputs, image_grid_thw)
            placeholders = (input_ids == self.config.image_token_id).sum(dim=1)
            vision_features, vision_mask = pack_images_per_sample(per_image, placeholders * rows_per_token)
        outputs = self.model.language_model(
            input_ids=None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **image_kwargs,
            **kwargs,
        )
        return BackboneOutput(outputs.last_hidden_state, vision_features, vision_mask, output_cache(outputs))

    def _vision_source(self) -> str:
        return "vision_tower" if self.post_decoder is None else self.post_decoder.config.vision_source

    def _block_vision_features(self, image_outputs, image_grid_thw) -> tuple[list[torch.Tensor], int]:
        """Each image's features for the block, and how many rows each placeholder token has."""
        if self._vision_source() == "projector":
            return list(image_outputs.pooler_output), 1
        patches = self._encoder_output_in_patch_order(image_outputs.last_hidden_state, image_grid_thw)
        merge = self.config.vision_config.spatial_merge_size
        return list(torch.split(patches, image_grid_thw.prod(-1).tolist())), merge * merge

    def _encoder_output_in_patch_order(self, hidden_states, image_grid_thw) -> torch.Tensor:
        return hidden_states  # Qwen2-VL and Qwen3-VL keep the processor's order

    def _image_kwargs_for_language_model(self, image_outputs, image_positions) -> dict:
        return {}

    # --- forward (generation: PostDecoderMixin) ---

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        pixel_values=None,
        image_grid_thw=None,
        logits_to_keep=0,
        post_decoder_state: PostDecoderState | None = None,
        output_post_decoder_attentions: bool = False,
        **kwargs,
    ):
        """As the Qwen-VL model's forward, with explicit M-RoPE positions (the prompt's own when none are passed
        and there is no cache). With a KV cache, pass the returned `post_decoder_state` back on the next call
        (generate() does this): it holds the block's vision keys/values, computed on the prefill step only."""
        kwargs.pop("mm_token_type_ids", None)
        position_ids = self._positions(input_ids, attention_mask, image_grid_thw, position_ids, kwargs)
        inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            **kwargs,
        )
        if self.post_decoder is None:
            return super().forward(**inputs, labels=labels, logits_to_keep=logits_to_keep)
        return self.block_forward(
            inputs,
            labels,
            logits_to_keep,
            post_decoder_state,
            output_post_decoder_attentions,
            QwenVLPostDecoderOutput,
        )


class Qwen2VLPostDecoderForConditionalGeneration(QwenVLPostDecoderMixin, Qwen2VLForConditionalGeneration):
    """`Qwen2VLForConditionalGeneration` whose logits are `lm_head(block(h, v))`; without a block, the plain model."""

    config_class = Qwen2VLPostDecoderConfig


class Qwen2_5_VLPostDecoderForConditionalGeneration(QwenVLPostDecoderMixin, Qwen2_5_VLForConditionalGeneration):
    """`Qwen2_5_VLForConditionalGeneration` whose logits are `lm_head(block(h, v))`."""

    config_class = Qwen2_5_VLPostDecoderConfig

    def _encoder_output_in_patch_order(self, hidden_states, image_grid_thw) -> torch.Tensor:
        """The encoder ran on groups of merge_size**2 patches permuted into windows: put them back."""
        vision = self.model.visual
        window_index, _ = get_vision_window_index(
            image_grid_thw,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            patch_size=vision.patch_size,
        )
        groups = hidden_states.reshape(-1, vision.spatial_merge_unit, hidden_states.shape[-1])
        return groups[torch.argsort(window_index.to(groups.device))].reshape(hidden_states.shape)


class Qwen3VLPostDecoderForConditionalGeneration(QwenVLPostDecoderMixin, Qwen3VLForConditionalGeneration):
    """`Qwen3VLForConditionalGeneration` whose logits are `lm_head(block(h, v))`."""

    config_class = Qwen3VLPostDecoderConfig

    def _image_kwargs_for_language_model(self, image_outputs, image_positions) -> dict:
        """Deepstack: the encoder's intermediate features, merged, added at the image positions of the first
        layers (as Qwen3VLModel does)."""
        # Split per image from transformers 5.2x on, one tensor per layer before.
        deepstack = [
            features if isinstance(features, torch.Tensor) else torch.cat(features)
            for features in image_outputs.deepstack_features
        ]
        return {"visual_pos_masks": image_positions, "deepstack_visual_embeds": deepstack}
