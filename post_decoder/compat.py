"""The one place that knows which transformers release is installed.

transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: as a keyword of a model's
forward, of `generate` and of `prepare_inputs_for_generation`, and as a field of model outputs. The
old name still works there but logs a deprecation warning (and goes in 5.40); releases before 5.24
only know the old name. Pass and read the cache through these two names, never a literal:

    output = model(input_ids, **{CACHE_KWARG: cache}, use_cache=True)
    cache = output_cache(output)
"""

from dataclasses import fields

from transformers.modeling_outputs import CausalLMOutputWithPast

# Detected from the library itself, not its version string, so a backport or a dev build is right too.
CACHE_KWARG = "cache" if "cache" in {field.name for field in fields(CausalLMOutputWithPast)} else "past_key_values"


def output_cache(output):
    """The KV cache of a model output (None when the call kept none), without the deprecated alias."""
    return getattr(output, CACHE_KWARG, None)
