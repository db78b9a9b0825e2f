"""What the backbone-cache tests share: counting backbone passes, comparing trained tensors."""

import torch

from post_decoder.families.llava import LlavaPostDecoderForConditionalGeneration


class BackboneCalls:
    """Counts the backbone passes of every model (patched on the class: the CLI loads its own model)."""

    def __init__(self, monkeypatch):
        self.count, real = 0, LlavaPostDecoderForConditionalGeneration.backbone_forward

        def counted(model, *args, **kwargs):
            self.count += 1
            return real(model, *args, **kwargs)

        monkeypatch.setattr(LlavaPostDecoderForConditionalGeneration, "backbone_forward", counted)


def assert_same_weights(one, two):
    assert set(one) == set(two)
    for name in one:
        assert torch.equal(one[name], two[name]), f"{name}: max |difference| {(one[name] - two[name]).abs().max()}"
