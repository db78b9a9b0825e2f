"""Tiny InstructBLIP-Vicuna models for tests, saved in the hub's layout (`Salesforce/instructblip-vicuna-7b`);
never imported by the product itself.

Nothing here downloads: a tiny ViT, a tiny Q-Former and a tiny Llama, a SentencePiece BPE trained on the spot for
the language model (Llama's kind, with the hub folder's `</s>` as `bos_token` and `[PAD]`, `<image>` added) and a
small WordPiece vocabulary for the Q-Former (BERT's kind, with `[DEC]` added, as the hub's `qformer_tokenizer`).
"""

import json
import os
import tempfile

import torch
from transformers import (
    AddedToken,
    AutoTokenizer,
    BertTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from ...tiny_parts import add_noise, train_llama_style_tokenizer
from .conversation import IMAGE_TOKEN

_CORPUS = [
    "Is there a dog in the image? Yes, there is a dog in the image.",
    "Is there a cat in the image? No, there is no cat in the image.",
    "Describe this image in detail. The image shows a red circle next to a blue square.",
    "What is unusual about this image? A man is ironing clothes on the back of a yellow car.",
    "There are two cups on a table and a person sitting on a chair.",
]
_QFORMER_WORDS = sorted({word.strip("?.,").lower() for line in _CORPUS for word in line.split()} | {"?", ".", ","})
NUM_QUERY_TOKENS = 4


def train_language_tokenizer(directory: str, vocab_size: int = 300):
    """A Llama-style SentencePiece BPE (byte fallback, <unk>=0, <s>=1, </s>=2) saved as the hub's InstructBLIP
    folder holds it: `bos_token` and `unk_token` "</s>" (LAVIS's choice), `[PAD]` and `<image>` added after the
    vocabulary. Returns the tokenizer, loaded back."""
    with tempfile.TemporaryDirectory() as scratch:
        train_llama_style_tokenizer(scratch, _CORPUS, vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(
            scratch, bos_token="</s>", unk_token="</s>", truncation_side="left", padding_side="left"
        )
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def make_qformer_tokenizer(directory: str):
    """A BERT WordPiece tokenizer (lower case) over the tiny corpus' words, with `[DEC]` as `bos_token`."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_QFORMER_WORDS]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)}, truncation_side="left")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_instructblip_config(tokenizer, qformer_tokenizer, image_size: int = 32, patch_size: int = 8):
    """InstructBLIP-Vicuna's shape in miniature: 4 query tokens, the image token after `[PAD]`, a Llama whose
    embeddings cover the tokenizer."""
    vision = InstructBlipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(qformer_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        cross_attention_frequency=1,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )


def make_tiny_instructblip(tokenizer, qformer_tokenizer, seed: int = 0) -> InstructBlipForConditionalGeneration:
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(tiny_instructblip_config(tokenizer, qformer_tokenizer))
    # Random init leaves biases at zero, norms at one and the query tokens at zero; perturb them so tests see
    # every weight.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name == "query_tokens":
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def image_processor(image_size: int) -> BlipImageProcessorPil:
    """The hub folder's preprocessing at another size: resize to a square (bicubic), CLIP's mean and std."""
    return BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )


def tiny_processor(tokenizer, qformer_tokenizer, config) -> InstructBlipProcessor:
    return InstructBlipProcessor(
        image_processor=image_processor(config.vision_config.image_size),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=config.num_query_tokens,
    )


def save_hub_layout(model, processor: InstructBlipProcessor, directory: str) -> str:
    """The hub's layout: config.json, model.safetensors, generation_config.json, the processor's files as the hub
    has them (the image processor in its own preprocessor_config.json, `num_query_tokens` in processor_config.json,
    the tokenizer, `qformer_tokenizer/`)."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    _write_json(os.path.join(directory, "preprocessor_config.json"), processor.image_processor.to_dict())
    _write_json(
        os.path.join(directory, "processor_config.json"),
        {"num_query_tokens": processor.num_query_tokens, "processor_class": type(processor).__name__},
    )
    return directory


def _write_json(path: str, content: dict):
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)


def make_tiny_hub_folder(directory: str, seed: int = 0) -> str:
    """A tiny `Salesforce/instructblip-vicuna-7b`-layout folder, tokenizers and all."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_language_tokenizer(os.path.join(scratch, "tokenizer"))
        qformer_tokenizer = make_qformer_tokenizer(os.path.join(scratch, "qformer_tokenizer"))
        model = make_tiny_instructblip(tokenizer, qformer_tokenizer, seed)
        return save_hub_layout(model, tiny_processor(tokenizer, qformer_tokenizer, model.config), directory)


def with_block(
    plain: InstructBlipForConditionalGeneration, variant: str, perturb: float = 0.0, seed: int = 0, **fields
):
    """Our model on the plain model's weights, with a new block of `variant` (the identity unless `perturb`ed by
    seeded noise of that scale)."""
    from ...block import PostDecoderConfig
    from .configuration import InstructBlipPostDecoderConfig
    from .modeling import InstructBlipPostDecoderForConditionalGeneration

    model = InstructBlipPostDecoderForConditionalGeneration(
        InstructBlipPostDecoderConfig.from_instructblip_config(plain.config)
    )
    model.load_state_dict(plain.state_dict())
    model.attach_post_decoder(PostDecoderConfig(variant=variant, **fields))
    if perturb:
        add_noise(model.post_decoder, perturb, seed)
    return model.eval()


def question_batch(model, processor, images: list, questions: list[str]) -> dict:
    """The family's prompts for (image or None, question) pairs, left-padded, with the images' pixel values and
    the Q-Former's tokens of each image's question: what forward and generate take."""
    from ...family import family_for

    family, tokenizer = family_for(model), processor.tokenizer
    rows = [
        family.tokenize_prompt(family.question_prompt(question, with_image=image is not None), tokenizer, model.config)
        for image, question in zip(images, questions)
    ]
    width, pad = max(map(len, rows)), tokenizer.pad_token_id
    batch = {
        "input_ids": torch.tensor([[pad] * (width - len(row)) + row for row in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows]),
    }
    pictured = [(image, question) for image, question in zip(images, questions) if image is not None]
    if pictured:
        batch["pixel_values"] = processor(images=[image for image, _ in pictured], return_tensors="pt")["pixel_values"]
        batch.update(family.prompt_inputs([question for _, question in pictured], processor))
    return batch
