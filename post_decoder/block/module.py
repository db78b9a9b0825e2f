"""The post-interaction block: backbone hidden states cross-attend to the image before `lm_head`.

Every variant starts as the identity: the output projections of its residual branches are
zero-initialised (as LoRA's B matrix), so the wrapped model's logits equal the plain model's and
DPO starts from policy == reference. Zero output projections, unlike zero scalar gates, still let
the gradient reach the branch on the first step.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .configuration import PostDecoderConfig

ZERO_INIT_ATTRIBUTE = "_post_decoder_zero_init"


def _zero_initialised_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    setattr(layer, ZERO_INIT_ATTRIBUTE, True)
    nn.init.zeros_(layer.weight)
    return layer


@dataclass
class PostDecoderState:
    """What the block keeps between calls: per-layer vision keys/values (computed once per image,
    reused on every decode step), which samples have an image, and, for `transformer_block`, the
    self-attention cache over the sequence."""

    vision_keys_values: list[tuple[torch.Tensor, torch.Tensor]]
    vision_mask: torch.Tensor | None  # [B, N] bool, True where a vision position is real
    has_image: torch.Tensor  # [B] bool
    self_attention_cache: DynamicCache | None = None

    def repeated(self, repeats: int) -> "PostDecoderState":
        """A copy with every sample repeated `repeats` times (to continue one prompt in a batch)."""
        cache = None
        if self.self_attention_cache is not None:
            cache = copy.deepcopy(self.self_attention_cache)
            cache.batch_repeat_interleave(repeats)
        return PostDecoderState(
            [
                (keys.repeat_interleave(repeats, 0), values.repeat_interleave(repeats, 0))
                for keys, values in self.vision_keys_values
            ],
            None if self.vision_mask is None else self.vision_mask.repeat_interleave(repeats, 0),
            self.has_image.repeat_interleave(repeats, 0),
            cache,
        )


class SwiGLUMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = _zero_initialised_linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionAlign(nn.Module):
    """Maps vision features (Dv) into the text width (D): an MLP Dv -> D -> D, or one Linear."""

    def __init__(self, vision_size: int, hidden_size: int, linear: bool):
        super().__init__()
        self.linear_1 = nn.Linear(vision_size, hidden_size)
        self.linear_2 = None if linear else nn.Linear(hidden_size, hidden_size)

    def forward(self, vision_features: torch.Tensor) -> torch.Tensor:
        aligned = self.linear_1(vision_features)
        if self.linear_2 is not None:
            aligned = self.linear_2(F.gelu(aligned))
        return aligned


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _attend(query, key, value, allowed: torch.Tensor, output_attentions: bool):
    """Scaled dot-product attention; `allowed` broadcasts to [B, H, Tq, Tk]. Returns (output, probs or None)."""
    if not output_attentions:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed), None
    scores = (query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    probs = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(dim=-1)
    return probs @ value, probs


class CrossAttention(nn.Module):
    """Text positions attend to every vision position of their own image: no causal mask, no text padding mask."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = _zero_initialised_linear(hidden_size, hidden_size)

    def keys_values(self, aligned_vision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            _split_heads(self.k_proj(aligned_vision), self.num_heads),
            _split_heads(self.v_proj(aligned_vision), self.num_heads),
        )

    def forward(self, x, keys_values, allowed, output_attentions=False):
        query = _split_heads(self.q_proj(x), self.num_heads)
        output, probs = _attend(query, *keys_values, allowed, output_attentions)
        return self.o_proj(_merge_heads(output)), probs


class CausalSelfAttention(nn.Module):
    """Causal self-attention over the backbone's sequence (transformer_block variant). No positional
    encoding of its own: the backbone's hidden states already carry position."""

    def __init__(self, hidden_size: int, num_heads: int, layer_index: int):
        super().__init__()
        self.num_heads = num_heads
        self.layer_index = layer_index
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = _zero_initialised_linear(hidden_size, hidden_size)

    def forward(self, x, attention_mask, cache: DynamicCache | None):
        query, key, value = (_split_heads(proj(x), self.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if cache is not None:
            key, value = cache.update(key, value, self.layer_index)
        allowed = _causal_padding_mask(query.shape[2], key.shape[2], attention_mask, x.device)
        output, _ = _attend(query, key, value, allowed, output_attentions=False)
        return self.o_proj(_merge_heads(output))


def _causal_padding_mask(query_length, key_length, attention_mask, device) -> torch.Tensor:
    """[B or 1, 1, Tq, Tk] bool: causal, keys at padding hidden, and a position always sees itself
    (so a left-padding query never has an empty row)."""
    past = key_length - query_length
    query_positions = torch.arange(query_length, device=device)[:, None] + past
    key_positions = torch.arange(key_length, device=device)[None, :]
    allowed = (key_positions <= query_positions)[None, None]
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the block's self-attention "
                f"sees {key_length}; pass the mask over past and current tokens"
            )
        allowed = allowed & attention_mask.bool()[:, None, None, :]
        allowed = allowed | (key_positions == query_positions)[None, None]
    return allowed


class PostInteractionLayer(nn.Module):
    def __init__(self, config: PostDecoderConfig, layer_index: int):
        super().__init__()
        size, heads = config.hidden_size, config.num_attention_heads
        if config.uses_self_attention:
            self.self_attn_norm = LlamaRMSNorm(size, eps=config.rms_norm_eps)
            self.self_attn = CausalSelfAttention(size, heads, layer_index)
        if config.uses_cross_attention:
            self.cross_attn_norm = LlamaRMSNorm(size, eps=config.rms_norm_eps)
            self.cross_attn = CrossAttention(size, heads)
        self.mlp_norm = LlamaRMSNorm(size, eps=config.rms_norm_eps)
        self.mlp = SwiGLUMLP(size, config.intermediate_size)

    def forward(self, x, state: PostDecoderState, layer_index, attention_mask, cross_allowed, output_attentions):
        if hasattr(self, "self_attn"):
            x = x + self.self_attn(self.self_attn_norm(x), attention_mask, state.self_attention_cache)
        probs = None
        if hasattr(self, "cross_attn"):
            keys_values = state.vision_keys_values[layer_index]
            update, probs = self.cross_attn(self.cross_attn_norm(x), keys_values, cross_allowed, output_attentions)
            x = x + update
        x = x + self.mlp(self.mlp_norm(x))
        return x, probs


class PostInteractionBlock(nn.Module):
    """h [B, T, D] and the image's vision features -> new hidden states for `lm_head`.

    Call `encode_vision` once per batch of images, then the block on any positions, any number
    of times (training: answer positions only; generation: every decode step).
    """

    def __init__(self, config: PostDecoderConfig):
        super().__init__()
        if config.hidden_size is None or config.vision_hidden_size is None:
            raise ValueError("PostDecoderConfig has unresolved sizes: call config.resolved_for(backbone_config) first")
        self.config = config
        if config.uses_cross_attention:
            linear = config.variant == "align_linear"
            self.align = VisionAlign(config.vision_hidden_size, config.hidden_size, linear=linear)
        self.layers = nn.ModuleList(PostInteractionLayer(config, index) for index in range(config.num_layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].mlp_norm.weight.dtype

    def encode_vision(
        self, vision_features: torch.Tensor | None, vision_mask: torch.Tensor | None, batch_size: int
    ) -> PostDecoderState:
        """vision_features [B, N, Dv] (None: no sample has an image); vision_mask [B, N], True where real."""
        if vision_features is None:
            has_image = torch.zeros(batch_size, dtype=torch.bool, device=self.layers[0].mlp_norm.weight.device)
            keys_values = []
        else:
            if vision_mask is None:
                vision_mask = torch.ones(vision_features.shape[:2], dtype=torch.bool, device=vision_features.device)
            has_image = vision_mask.any(dim=1)
            keys_values = []
            if hasattr(self, "align"):
                aligned = self.align(vision_features.to(self.dtype))
                keys_values = [layer.cross_attn.keys_values(aligned) for layer in self.layers]
        cache = DynamicCache() if self.config.uses_self_attention else None
        return PostDecoderState(keys_values, vision_mask, has_image, cache)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: PostDecoderState,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """attention_mask [B, past + T] is only used by `transformer_block`'s self-attention.
        Returns the new hidden states (in the input's dtype) and, if asked, the cross-attention
        probabilities per layer [B, heads, T, N]."""
        if not state.has_image.any():  # no sample has an image: all pass through unchanged
            return hidden_states, None
        x = hidden_states.to(self.dtype)
        cross_allowed = None
        if state.vision_mask is not None:
            # Samples without an image get an all-open mask (their output is discarded below), so no row is empty.
            cross_allowed = (state.vision_mask | ~state.has_image[:, None])[:, None, None, :]
        all_probs = []
        for index, layer in enumerate(self.layers):
            x, probs = layer(x, state, index, attention_mask, cross_allowed, output_attentions)
            all_probs.append(probs)
        # A sample without an image passes through unchanged.
        output = torch.where(state.has_image[:, None, None], x.to(hidden_states.dtype), hidden_states)
        attentions = tuple(all_probs) if output_attentions and hasattr(self, "align") else None
        return output, attentions
