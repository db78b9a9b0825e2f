import pytest
import torch

from post_decoder import VARIANTS, PostDecoderConfig, PostInteractionBlock
from tests.helpers import add_noise


def tiny_block(variant, **fields):
    config = PostDecoderConfig(
        variant=variant, hidden_size=32, vision_hidden_size=24, num_attention_heads=4, intermediate_size=48, **fields
    )
    return PostInteractionBlock(config)


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_is_exactly_the_identity_at_initialisation(variant):
    block = tiny_block(variant, num_layers=2)
    hidden = torch.randn(3, 5, 32)
    state = block.encode_vision(torch.randn(3, 7, 24), None, batch_size=3)
    output, _ = block(hidden, state, attention_mask=torch.ones(3, 5))
    assert torch.equal(output, hidden)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_sample_without_an_image_passes_through_unchanged(variant):
    block = add_noise(tiny_block(variant), 0.3)
    hidden = torch.randn(2, 4, 32)
    mask = torch.tensor([[True] * 7, [False] * 7])
    state = block.encode_vision(torch.randn(2, 7, 24), mask, batch_size=2)
    output, _ = block(hidden, state, attention_mask=torch.ones(2, 4))
    assert torch.equal(output[1], hidden[1])
    assert not torch.allclose(output[0], hidden[0])
    assert torch.isfinite(output).all()


def test_cross_attention_sees_the_image_and_ignores_masked_vision_positions():
    block = add_noise(tiny_block("post_interaction"), 0.3)
    hidden = torch.randn(1, 3, 32)
    vision = torch.randn(1, 6, 24)
    mask = torch.tensor([[True, True, True, True, False, False]])
    reference, _ = block(hidden, block.encode_vision(vision, mask, 1))
    with_probs, probs = block(hidden, block.encode_vision(vision, mask, 1), output_attentions=True)
    torch.testing.assert_close(with_probs, reference, rtol=1e-4, atol=1e-4)
    assert probs[0].shape == (1, 4, 3, 6)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(1, 4, 3), atol=1e-8, rtol=1e-5)
    assert torch.all(probs[0][..., 4:] == 0)
    changed_padding = vision.clone()
    changed_padding[:, 4:] = 100.0
    same, _ = block(hidden, block.encode_vision(changed_padding, mask, 1))
    torch.testing.assert_close(same, reference, atol=1e-6, rtol=1e-5)
    other_image, _ = block(hidden, block.encode_vision(torch.randn(1, 6, 24), mask, 1))
    assert not torch.allclose(other_image, reference)


def test_no_cross_attn_variant_cannot_see_the_image():
    block = add_noise(tiny_block("no_cross_attn"), 0.3)
    hidden = torch.randn(1, 3, 32)
    first, _ = block(hidden, block.encode_vision(torch.randn(1, 6, 24), None, 1))
    second, _ = block(hidden, block.encode_vision(torch.randn(1, 6, 24), None, 1))
    assert torch.equal(first, second)
    assert not torch.allclose(first, hidden)


def test_layer_and_width_fields_shape_the_block():
    block = tiny_block("transformer_block", num_layers=3)
    assert len(block.layers) == 3
    assert block.layers[0].mlp.gate_proj.out_features == 48
    assert block.layers[0].self_attn.num_heads == 4
    assert not hasattr(tiny_block("no_cross_attn"), "align")
    assert tiny_block("align_linear").align.linear_2 is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"variant": "cross"}, "unknown post-decoder variant"),
        ({"vision_source": "clip"}, "unknown post-decoder vision_source"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
    ],
)
def test_bad_config_values_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        PostDecoderConfig(**fields)


def test_unresolved_sizes_are_refused():
    with pytest.raises(ValueError, match="resolved_for"):
        PostInteractionBlock(PostDecoderConfig())


def test_sizes_resolve_from_llava_1_5_7b():
    from transformers import LlavaConfig

    resolved = PostDecoderConfig().resolved_for(LlavaConfig())
    assert (resolved.hidden_size, resolved.vision_hidden_size) == (4096, 1024)
    assert (resolved.num_attention_heads, resolved.intermediate_size) == (32, 11008)
    assert PostDecoderConfig(vision_source="projector").resolved_for(LlavaConfig()).vision_hidden_size == 4096
    block_parameters = sum(p.numel() for p in PostInteractionBlock(resolved).parameters())
    assert 220e6 < block_parameters < 226e6  # the 223M block of DESIGN.md


def test_a_self_attention_mask_of_the_wrong_length_is_named():
    block = tiny_block("transformer_block")
    state = block.encode_vision(torch.randn(1, 6, 24), None, 1)
    with pytest.raises(ValueError, match="attention_mask covers 4 positions but the block's self-attention sees 3"):
        block(torch.randn(1, 3, 32), state, attention_mask=torch.ones(1, 4))
