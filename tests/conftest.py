"""Shared fixtures: a tiny tokenizer and tiny LLaVA models, built once per test session, and the POPE
workspace of the evaluator's tests. Plain helper functions live in tests/helpers."""

import pytest
import torch

import post_decoder  # noqa: F401  (registers the Auto classes)
from post_decoder.families.llava.conversation import add_llava_tokens
from post_decoder.families.llava.tiny import make_tiny_llava, train_tiny_tokenizer
from tests.helpers.pope_workspace import build_pope_workspace


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tiny_tokenizer"))
    train_tiny_tokenizer(directory)
    return directory


@pytest.fixture(scope="session")
def text_vocab_size(tokenizer_dir):
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="session")
def llava_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return add_llava_tokens(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="session")
def plain_llava(text_vocab_size):
    return make_tiny_llava(text_vocab_size)


@pytest.fixture(scope="module")
def pope_workspace(plain_llava, llava_tokenizer, tmp_path_factory):
    """A saved tiny model with a block, 4 images, and three small POPE sets sharing them (read only)."""
    return build_pope_workspace(plain_llava, llava_tokenizer, tmp_path_factory.mktemp("pope_cli"))
