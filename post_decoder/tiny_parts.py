"""Parts the families' tiny test models share (never imported by the product itself): a Llama-style SentencePiece
tokenizer trained on the spot, and seeded noise that moves a block off its identity start."""

import json
import os
import tempfile

import sentencepiece as spm
import torch
from transformers import AutoTokenizer


def train_llama_style_tokenizer(
    directory: str, corpus: list[str], vocab_size: int = 400, remove_extra_whitespaces: bool = True
):
    """Train a Llama-style SentencePiece BPE (byte fallback, <unk>=0, <s>=1, </s>=2) and save it
    in Llama 2's layout (`tokenizer.model` + `tokenizer_config.json`). Returns the loaded tokenizer.

    remove_extra_whitespaces: SentencePiece's default, kept for the tiny models and the shipped toy model; Llama 2's
    model says False (runs of spaces are kept), which the tokenization-fidelity tests need."""
    os.makedirs(directory, exist_ok=True)
    lines = list(corpus)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(line.replace("\n", " ") for line in lines))
    try:
        spm.SentencePieceTrainer.train(
            input=handle.name,
            model_prefix=os.path.join(directory, "tokenizer"),
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            add_dummy_prefix=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=remove_extra_whitespaces,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    finally:
        os.unlink(handle.name)
    os.remove(os.path.join(directory, "tokenizer.vocab"))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 2048,
        "padding_side": "right",
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    return AutoTokenizer.from_pretrained(directory)


def add_noise(module: torch.nn.Module, scale: float, seed: int = 0):
    """Add seeded Gaussian noise of `scale` to every parameter of `module` (a block at its identity start)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(
                scale * torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
            )
    return module
