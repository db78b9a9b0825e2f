"""The KV cache's name (`post_decoder.compat`): right for the installed transformers, and our model
used through it logs no deprecation warning (transformers 5.24 deprecated `past_key_values`)."""

import inspect
import logging
import warnings
from contextlib import contextmanager

import pytest
import torch
import transformers
from packaging.version import Version
from transformers.models.llama.modeling_llama import LlamaModel

from post_decoder.compat import CACHE_KWARG, output_cache
from tests.helpers import image_batch, with_block


def test_the_cache_keyword_is_the_one_this_transformers_names():
    expected = "cache" if Version(transformers.__version__) >= Version("5.24.0.dev0") else "past_key_values"
    assert CACHE_KWARG == expected
    # and the language model's forward really takes it by that name
    assert CACHE_KWARG in inspect.signature(LlamaModel.forward).parameters


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextmanager
def deprecation_messages():
    """Every deprecation message, from Python's warnings and from transformers' logger, raised inside."""
    transformers.utils.logging.warning_once.cache_clear()  # else a message logged earlier in the session is not again
    logger = transformers.utils.logging.get_logger("transformers")
    handler = _Records()
    logger.addHandler(handler)
    messages = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(handler)
    messages.extend(str(warning.message) for warning in caught)
    messages.extend(handler.messages)
    messages[:] = [message for message in messages if "deprecat" in message.lower()]


def cached_forward_and_generate(model, batch, cache_keyword):
    with torch.no_grad():
        prefill = model(**batch, use_cache=True, logits_to_keep=1)
        cache = output_cache(prefill)
        next_token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        attention_mask = torch.cat([batch["attention_mask"], torch.ones_like(next_token)], dim=1)
        step = model(
            input_ids=next_token,
            attention_mask=attention_mask,
            use_cache=True,
            post_decoder_state=prefill.post_decoder_state,
            **{cache_keyword: cache},
        )
        model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return cache, step


@pytest.mark.parametrize("variant", ["post_interaction", "transformer_block"])
def test_cached_forward_and_generate_log_no_deprecation(plain_llava, llava_tokenizer, variant):
    model = with_block(plain_llava, variant, perturb=0.3)
    batch = image_batch(model, llava_tokenizer, ["Is there a dog?", "Is there a cup?"], with_image=[True, False])
    with deprecation_messages() as messages:
        cache, step = cached_forward_and_generate(model, batch, CACHE_KWARG)
    assert messages == []
    assert cache is not None and output_cache(step) is cache  # the cache went in and came back by that name


def test_the_old_name_is_caught_where_it_is_deprecated(plain_llava, llava_tokenizer):
    """The capture above works: the deprecated keyword, on a transformers that deprecates it, is seen."""
    if CACHE_KWARG == "past_key_values":
        pytest.skip(f"transformers {transformers.__version__} has no other name for the cache")
    model = with_block(plain_llava, "post_interaction", perturb=0.3)
    batch = image_batch(model, llava_tokenizer, ["Is there a dog?"])
    with deprecation_messages() as messages:
        cached_forward_and_generate(model, batch, "past_key_values")
    assert any("past_key_values" in message for message in messages)


def test_the_checkpointing_field_is_trainings_own_and_not_deprecated(tmp_path):
    from transformers import TrainingArguments

    from post_decoder.compat import activation_checkpointing_field

    name = activation_checkpointing_field()
    renamed = Version(transformers.__version__) >= Version("5.24.0.dev0")
    assert name == ("activation_checkpointing" if renamed else "gradient_checkpointing")
    with deprecation_messages() as messages:
        arguments = TrainingArguments(output_dir=str(tmp_path), report_to=[], **{name: True})
    assert messages == [] and getattr(arguments, name) is True
