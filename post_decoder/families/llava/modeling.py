"""LLaVA with a post-interaction block between the LLM backbone and `lm_head`."""

from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from ...block import PostDecoderState
from ...compat import output_cache
from ...family import BackboneOutput, pack_images_per_sample
from ...wrapped_model import PostDecoderMixin
from .configuration import LlavaPostDecoderConfig


@dataclass
class LlavaPostDecoderOutput(LlavaCausalLMOutputWithPast):
    """LLaVA's output plus the block's state (pass it back with the KV cache) and, if asked, its
    cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


class LlavaPostDecoderForConditionalGeneration(PostDecoderMixin, LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` whose logits are `lm_head(block(h, v))`.

    With `config.post_decoder_config = None` it is exactly the plain LLaVA.
    """

    config_class = LlavaPostDecoderConfig

    # --- the backbone (see post_decoder/family.py) ---

    def backbone_forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        **kwargs,
    ) -> BackboneOutput:
        """One pass of the vision tower and the language model: h, v (+ mask), the KV cache.
        The cache goes in `kwargs` under `compat.CACHE_KWARG` (its name depends on transformers)."""
        vision_features, vision_mask = None, None
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError(
                    "with an image, pass input_ids: the block finds each sample's image by its image tokens"
                )
            image_outputs = self.model.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                return_dict=True,
            )
            if self.post_decoder is not None and self.post_decoder.config.vision_source == "projector":
                per_image = torch.stack(image_outputs.pooler_output)
            else:
                per_image = self._selected_vision_layer(
                    image_outputs.hidden_states, vision_feature_layer, vision_feature_select_strategy
                )
            image_tokens = (input_ids == self.config.image_token_id).sum(dim=1)
            vision_features, vision_mask = pack_images_per_sample(per_image, image_tokens)
            # The projected image goes into the embeddings here, as LlavaModel would do, so the tower runs once.
            # (transformers >= 5.18 could take the tower's output as `mm_encoder_outputs`; the floor, 5.17, cannot.)
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
            projected = torch.cat(image_outputs.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            image_positions = self.model.get_placeholder_mask(input_ids, inputs_embeds, projected)
            inputs_embeds, input_ids = inputs_embeds.masked_scatter(image_positions, projected), None
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return BackboneOutput(outputs.last_hidden_state, vision_features, vision_mask, output_cache(outputs))

    def _selected_vision_layer(self, hidden_states, layer, strategy) -> torch.Tensor:
        """The tower's layer(s) that LLaVA feeds its projector, before the projector (CLS dropped
        under the `default` strategy)."""
        layer = self.config.vision_feature_layer if layer is None else layer
        strategy = self.config.vision_feature_select_strategy if strategy is None else strategy
        layers = [layer] if isinstance(layer, int) else list(layer)
        selected = [hidden_states[index] for index in layers]
        if strategy == "default":
            selected = [features[:, 1:] for features in selected]
        return torch.cat(selected, dim=-1)

    # --- forward (generation: PostDecoderMixin) ---

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        labels=None,
        logits_to_keep=0,
        post_decoder_state: PostDecoderState | None = None,
        output_post_decoder_attentions: bool = False,
        **kwargs,
    ) -> LlavaPostDecoderOutput:
        """As LLaVA's forward. The KV cache comes in `kwargs` under `compat.CACHE_KWARG`, so the name the
        installed transformers uses reaches the language model unchanged. With a KV cache, pass the
        returned `post_decoder_state` back on the next call (generate() does this): it holds the block's
        vision keys/values, which transformers no longer recomputes because it sends the image on the
        prefill step only."""
        backbone_inputs = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )
        if self.post_decoder is None:
            return super().forward(**backbone_inputs, labels=labels, logits_to_keep=logits_to_keep)
        return self.block_forward(
            backbone_inputs,
            labels,
            logits_to_keep,
            post_decoder_state,
            output_post_decoder_attentions,
            LlavaPostDecoderOutput,
            **kwargs,
        )
