"""LLaVA-1.5's tokenizer: Llama's SentencePiece one with LLaVA's ids, shared with MiniGPT-4 from
`post_decoder/llama_tokenizer.py` (this module keeps the names importable where they were)."""

from ...llama_tokenizer import (  # noqa: F401
    SAVED_CLASS_NAME,
    SENTENCEPIECE_FILE,
    TOKENIZER_CONFIG_FILE,
    LlavaLlamaTokenizer,
    has_sentencepiece_model,
    load_tokenizer,
)
