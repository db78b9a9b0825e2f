"""InstructBLIP's inner language model, able to run the block: where `generate`'s decode steps happen.

InstructBLIP's `generate` encodes the image, then hands the prompt's embeddings to its language model's own
`generate` (Vicuna's `LlamaForCausalLM`). So the block has to act inside that model's forward: the language
model here is the text config's own causal-LM class with `LanguageModelBlockMixin` in front, which

  - takes the image's vision features (`post_decoder_vision`, `post_decoder_vision_mask`: tensors, so `generate`
    repeats them for beams and `num_return_sequences`) or an encoded `post_decoder_state`, and then returns
    `lm_head(block(h, v))` and the block's state;
  - carries that state from step to step with the KV cache (`_update_model_kwargs_for_generation`).

Called without either it is exactly the plain language model. The block itself is not one of its modules: it
belongs to the outer model (its tensors stay `post_decoder.*`), which this model reaches through `host`.
"""

import dataclasses
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...block import PostDecoderState
from ...compat import CACHE_KWARG, output_cache
from ...family import BackboneOutput


@dataclass
class BlockCausalLMOutput(CausalLMOutputWithPast):
    """The language model's output plus the block's state (pass it back with the KV cache) and, if asked, its
    cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


class LanguageModelBlockMixin:
    """Before a transformers causal-LM class in the bases (see `language_model_class`)."""

    _post_decoder_host = None  # a weak reference to the outer model: a strong one would make it a submodule

    def link_host(self, host):
        """Point this language model at the model whose block (`host.post_decoder`) and head it runs."""
        self._post_decoder_host = weakref.ref(host)

    @property
    def host(self):
        return None if self._post_decoder_host is None else self._post_decoder_host()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        logits_to_keep=0,
        post_decoder_vision: torch.Tensor | None = None,
        post_decoder_vision_mask: torch.Tensor | None = None,
        post_decoder_state: PostDecoderState | None = None,
        output_post_decoder_attentions: bool = False,
        **kwargs,
    ):
        """The plain language model's forward, unless the block's image comes with the call: `post_decoder_vision`
        [B, N, Dv] (and its mask [B, N]) on the first step, or the `post_decoder_state` a cached step returned."""
        host = self.host
        with_block = host is not None and host.post_decoder is not None
        if not with_block or (post_decoder_vision is None and post_decoder_state is None):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        cache = output_cache(outputs)
        if post_decoder_state is not None:
            post_decoder_vision = post_decoder_vision_mask = None  # encoded already: the state is reused
            if cache is None and post_decoder_state.self_attention_cache is not None:
                # No KV cache: the whole sequence is here again, so the block's self-attention starts over too.
                post_decoder_state = dataclasses.replace(post_decoder_state, self_attention_cache=DynamicCache())
        backbone = BackboneOutput(outputs.last_hidden_state, post_decoder_vision, post_decoder_vision_mask, cache)
        logits, post_decoder_state, attentions = host.block_then_head(
            backbone, attention_mask, logits_to_keep, post_decoder_state, output_post_decoder_attentions
        )
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return BlockCausalLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_KWARG: cache},
            post_decoder_state=post_decoder_state,
            post_decoder_attentions=attentions,
        )

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # Carry the block's state only with a KV cache: without one the vision features are encoded every step.
        if getattr(outputs, "post_decoder_state", None) is not None and output_cache(outputs) is not None:
            model_kwargs["post_decoder_state"] = outputs.post_decoder_state
        return model_kwargs

    def generate(self, *args, **kwargs):
        host = self.host
        block = None if host is None else host.post_decoder
        with_block = kwargs.get("post_decoder_vision") is not None or kwargs.get("post_decoder_state") is not None
        if with_block and block is not None and block.config.uses_self_attention:
            generation_config = kwargs.get("generation_config") or self.generation_config
            if (kwargs.get("num_beams") or generation_config.num_beams or 1) > 1:
                raise NotImplementedError(
                    "beam search is not supported with the transformer_block variant: its self-attention cache "
                    "is not reordered between beams; use greedy or sampling"
                )
        return super().generate(*args, **kwargs)


_CLASSES: dict[type, type] = {}


def language_model_class(base: type) -> type:
    """`base` (a transformers causal-LM class, e.g. `LlamaForCausalLM`) with `LanguageModelBlockMixin` in front;
    one class per base, so that instances of the same base share it."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"{base.__name__}WithPostDecoder", (LanguageModelBlockMixin, base), {})
    return _CLASSES[base]
