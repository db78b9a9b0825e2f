"""What every family's model class shares: building and attaching the block, running the block then
`lm_head` on the backbone's output, and carrying the block's state through `generate`.

    class LlavaPostDecoderForConditionalGeneration(PostDecoderMixin, LlavaForConditionalGeneration): ...

The family's class adds `backbone_forward` (its own tower and language model) and a `forward` that
calls it, then `block_then_head` (or `block_forward`). `generate` runs its decoding steps on this forward, so the
block's state rides from step to step with the KV cache; a family whose library `generate` hands the prompt to an
inner language model (BLIP-2, InstructBLIP) puts `GenerateOnThisModel` after this mixin in its bases.
"""

import torch
from transformers import GenerationMixin
from transformers import initialization as init

from .block import ZERO_INIT_ATTRIBUTE, PostDecoderConfig, PostDecoderState, PostInteractionBlock
from .compat import CACHE_KWARG, output_cache, slice_logits_to_keep
from .family import BackboneOutput


class PostDecoderMixin:
    """Before a transformers `...ForConditionalGeneration` class in the bases: `self.post_decoder` is the
    block, None for the plain model (`config.post_decoder_config = None`)."""

    def __init__(self, config):
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
        reference = self.get_output_embeddings().weight
        self.post_decoder = block.to(device=reference.device, dtype=reference.dtype)
        self.config.post_decoder_config = resolved
        return self.post_decoder

    def block_then_head(
        self,
        backbone: BackboneOutput,
        attention_mask: torch.Tensor | None,
        logits_to_keep,
        post_decoder_state: PostDecoderState | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, PostDecoderState, tuple[torch.Tensor, ...] | None]:
        """(logits, the block's state to pass back with the KV cache, cross-attention probabilities or None)."""
        hidden_states = backbone.hidden_states
        if post_decoder_state is None or backbone.vision_features is not None:
            post_decoder_state = self.post_decoder.encode_vision(
                backbone.vision_features, backbone.vision_mask, batch_size=hidden_states.shape[0]
            )
        token_wise = not self.post_decoder.config.uses_self_attention
        if token_wise:  # the block only needs the positions whose logits are kept
            hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        hidden_states, attentions = self.post_decoder(
            hidden_states, post_decoder_state, attention_mask, output_attentions=output_attentions
        )
        if not token_wise:
            hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
            if attentions is not None:
                attentions = tuple(
                    slice_logits_to_keep(a.transpose(1, 2), logits_to_keep).transpose(1, 2) for a in attentions
                )
        return self.get_output_embeddings()(hidden_states), post_decoder_state, attentions

    def block_forward(
        self,
        backbone_inputs: dict,
        labels,
        logits_to_keep,
        post_decoder_state: PostDecoderState | None,
        output_attentions: bool,
        output_class,
        **loss_kwargs,
    ):
        """A forward with the block: the family's `backbone_forward(**backbone_inputs)`, the block then `lm_head`,
        the loss on `labels`; returns `output_class` (a transformers output with `post_decoder_state` and
        `post_decoder_attentions` fields) holding the KV cache under `compat.CACHE_KWARG`. Without a block,
        `lm_head` on the backbone's output: the plain model, for a family whose library forward cannot run a
        cached step without the image (BLIP-2's, InstructBLIP's)."""
        backbone = self.backbone_forward(**backbone_inputs)
        if self.post_decoder is None:
            hidden_states = slice_logits_to_keep(backbone.hidden_states, logits_to_keep)
            logits, post_decoder_state, attentions = self.get_output_embeddings()(hidden_states), None, None
        else:
            logits, post_decoder_state, attentions = self.block_then_head(
                backbone, backbone_inputs.get("attention_mask"), logits_to_keep, post_decoder_state, output_attentions
            )
        loss = None
        if labels is not None:
            vocab_size = self.config.text_config.vocab_size
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **loss_kwargs)
        return output_class(
            loss=loss,
            logits=logits,
            **{CACHE_KWARG: backbone.past_key_values},
            post_decoder_state=post_decoder_state,
            post_decoder_attentions=attentions,
        )

    # --- generation ---

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


class GenerateOnThisModel:
    """Between `PostDecoderMixin` and a BLIP-style model (whose `generate` hands the prompt's embeddings to its inner
    language model, which would skip the block) in the bases: `generate` is the library's own decoding loop on
    this model's forward. The image goes in on the prompt's step only (`generate` drops `pixel_values` after it,
    and the `PRE_ENCODED_IMAGES` inputs here once a KV cache holds the prompt); the model's forward must run the
    plain model's steps too (no image, a KV cache)."""

    PRE_ENCODED_IMAGES = ("image_embeds",)  # an image already through the vision encoder: the prompt's step only
    main_input_name = "input_ids"  # BLIP's is pixel_values; generate reads the prompt from input_ids
    generate = GenerationMixin.generate

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if output_cache(outputs) is not None:
            for name in self.PRE_ENCODED_IMAGES:
                model_kwargs.pop(name, None)
        return model_kwargs
