"""The one place that knows which transformers release is installed (setup.py's range, tested at both ends by CI).

The KV cache: transformers 5.24 renamed it from `past_key_values` to `cache`, as a keyword of a model's
forward, of `generate` and of `prepare_inputs_for_generation`, and as a field of model outputs. The
old name still works there but logs a deprecation warning (and goes in 5.40); releases before 5.24
only know the old name. Pass and read the cache through these two names, never a literal:

    output = model(input_ids, **{CACHE_KWARG: cache}, use_cache=True)
    cache = output_cache(output)

Two more helpers arrived after the floor, 5.17 (the GPU machine's release): `SubConfigSpec` (5.20; None
before, when a composite config lists its sub-configs in a plain `sub_configs` dict) and
`slice_logits_to_keep` (5.21; before, each model sliced inline, as the fallback below does). And 5.24
renamed `TrainingArguments.gradient_checkpointing`: see `activation_checkpointing_field`.
"""

from dataclasses import fields

from transformers.modeling_outputs import CausalLMOutputWithPast

# Detected from the library itself, not its version string, so a backport or a dev build is right too.
CACHE_KWARG = "cache" if "cache" in {field.name for field in fields(CausalLMOutputWithPast)} else "past_key_values"


def output_cache(output):
    """The KV cache of a model output (None when the call kept none), without the deprecated alias."""
    return getattr(output, CACHE_KWARG, None)


try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.20
    SubConfigSpec = None

try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.21

    def slice_logits_to_keep(hidden_states, logits_to_keep):
        """The last `logits_to_keep` positions (0: all), or the positions a 1-D tensor lists."""
        positions = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, positions]


def activation_checkpointing_field() -> str:
    """`TrainingArguments`' name for activation (gradient) checkpointing: `activation_checkpointing` from
    transformers 5.24 (the old name then warns), `gradient_checkpointing` before."""
    from transformers import TrainingArguments  # here, not at the top: the model alone does not need the trainer

    names = {field.name for field in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
