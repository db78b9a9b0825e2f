"""LLaVA with a post-interaction block between the LLM backbone and `lm_head`."""

from dataclasses import dataclass

import torch
from transformers import LlavaForConditionalGeneration
from transformers import initialization as init
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from .backbone import BackboneOutput, pack_images_per_sample
from .block import ZERO_INIT_ATTRIBUTE, PostDecoderState, PostInteractionBlock
from .compat import CACHE_KWARG, output_cache, slice_logits_to_keep
from .configuration import LlavaPostDecoderConfig, PostDecoderConfig


@dataclass
class LlavaPostDecoderOutput(LlavaCausalLMOutputWithPast):
    """LLaVA's output plus the block's state (pass it back with the KV cache) and, if asked, its
    cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


class LlavaPostDecoderForConditionalGeneration(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` whose logits are `lm_head(block(h, v))`.

    With `config.post_decoder_config = None` it is exactly the plain LLaVA.
    """

    config_class = LlavaPostDecoderConfig

    def __init__(self, config: LlavaPostDecoderConfig):
        super().__init__(config)
        self.post_decoder = None
        if config.post_decoder_config is not None:
            self.post_decoder = PostInteractionBlock(config.post_decoder_config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if getattr(module, ZERO_INIT_ATTRIBUTE, False):
            init.zeros_(module.weight)

    def attach_post_decoder(self, post_decoder_config: PostDecoderConfig | str) -> PostInteractionBlock:
        """Add a new block at its identity initialisation (replacing any existing one)."""
        if isinstance(post_decoder_config, str):
            post_decoder_config = PostDecoderConfig(variant=post_decoder_config)
        resolved = post_decoder_config.resolved_for(self.config)
        block = PostInteractionBlock(resolved)
        block.apply(self._init_weights)
        reference = self.lm_head.weight
        self.post_decoder = block.to(device=reference.device, dtype=reference.dtype)
        self.config.post_decoder_config = resolved
        return self.post_decoder

    # --- the backbone interface (see backbone.py) ---

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

    # --- forward and generation ---

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
        backbone = self.backbone_forward(**backbone_inputs)
        hidden_states = backbone.hidden_states
        if post_decoder_state is None or backbone.vision_features is not None:
            post_decoder_state = self.post_decoder.encode_vision(
                backbone.vision_features, backbone.vision_mask, batch_size=hidden_states.shape[0]
            )
        token_wise = not self.post_decoder.config.uses_self_attention
        if token_wise:  # the block only needs the positions whose logits are kept
            hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        hidden_states, attentions = self.post_decoder(
            hidden_states, post_decoder_state, attention_mask, output_attentions=output_post_decoder_attentions
        )
        if not token_wise:
            hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
            if attentions is not None:
                attentions = tuple(
                    slice_logits_to_keep(a.transpose(1, 2), logits_to_keep).transpose(1, 2) for a in attentions
                )
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            vocab_size = self.config.text_config.vocab_size
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
        return LlavaPostDecoderOutput(
            loss=loss,
            logits=logits,
            **{CACHE_KWARG: backbone.past_key_values},
            post_decoder_state=post_decoder_state,
            post_decoder_attentions=attentions,
        )

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # Carry the block's state only with a KV cache: without one the image comes back every step.
        if getattr(outputs, "post_decoder_state", None) is not None and output_cache(outputs) is not None:
            model_kwargs["post_decoder_state"] = outputs.post_decoder_state
        return model_kwargs

    def generate(self, *args, **kwargs):
        if self.post_decoder is not None and self.post_decoder.config.uses_self_attention:
            generation_config = kwargs.get("generation_config") or self.generation_config
            if (kwargs.get("num_beams") or generation_config.num_beams or 1) > 1:
                raise NotImplementedError(
                    "beam search is not supported with the transformer_block variant: its self-attention cache "
                    "is not reordered between beams; use greedy or sampling"
                )
        return super().generate(*args, **kwargs)
