"""Train the toy world's base model as a tiny Qwen2.5-VL: the same two stages as the LLaVA one (base_model.py),
on Qwen's own model class, chat template and image processor.

  1. the vision encoder learns to see: a linear head on the mean of its last block's output (before the patch
     merger: the features the block reads by default) predicts which categories are in the image;
  2. the encoder is frozen; the patch merger and the LLM learn the world's conversations in Qwen's chat
     template, whose text names a partner next to its anchor whether or not it is there.

Every toy image gets the same grid: 64x64 pixels, 8-pixel patches (8x8 of them), 2x2 merges, so each merged
token is one 16-pixel cell of the world, one object; `min_pixels` = `max_pixels` = 64*64 pins the resize. The
vision window covers the whole image, so Qwen2.5-VL's window reordering is the identity here.
"""

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from post_decoder.families.qwen_vl import QWEN2_5_VL
from post_decoder.families.qwen_vl.conversation import Conversation
from post_decoder.families.qwen_vl.loading import load_image_processor
from post_decoder.families.qwen_vl.tiny import preprocessor_config, train_tiny_qwen_tokenizer
from post_decoder.images import open_image
from post_decoder.saving import save_model_folder

from ..data.llava_data import SupervisedDataset
from . import QWEN_CHECKPOINT  # noqa: F401  (its home is the package; named here too)
from .base_model import (
    read_world_conversations,
    train_deterministically,
    train_llava,
    world_presence_labels,
    write_training_summary,
)

CONV_MODE = "qwen2_vl"  # Qwen2.5-VL's: the default system message


@dataclass(frozen=True)
class QwenBaseConfig:
    seed: int = 0
    tokenizer_vocab: int = 512  # byte-level BPE, the 256 bytes included
    image_size: int = 64
    patch_size: int = 8
    merge_size: int = 2  # a merged token covers patch_size * merge_size = 16 pixels: the world's cell
    vision_hidden_size: int = 64
    vision_layers: int = 3
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    tower_epochs: int = 6
    tower_learning_rate: float = 2e-3
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    threads: int = 1


def conversation_texts(samples) -> list[str]:
    """The training conversations in Qwen's chat template, the image placeholders left out (the tokenizer's
    corpus)."""
    texts = []
    for sample in samples:
        conversation = Conversation.for_mode(CONV_MODE)
        for role, text in sample.turns:
            text = text.replace("<image>\n", "").replace("<image>", "")
            conversation.add_user(text) if role == "user" else conversation.add_assistant(text)
        texts.append(conversation.prompt())
    return texts


def toy_qwen_config(config: QwenBaseConfig, tokenizer) -> Qwen2_5_VLConfig:
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    head_dim = config.hidden_size // config.num_heads
    unit = head_dim // 16  # M-RoPE splits head_dim / 2 rotary pairs 2:3:3 into time, height, width
    text = dict(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        hidden_size=config.hidden_size,
        intermediate_size=2 * config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2 * unit, 3 * unit, 3 * unit],
        },
    )
    vision = dict(
        depth=config.vision_layers,
        hidden_size=config.vision_hidden_size,
        intermediate_size=2 * config.vision_hidden_size,
        out_hidden_size=config.hidden_size,
        num_heads=config.num_heads,
        patch_size=config.patch_size,
        spatial_merge_size=config.merge_size,
        temporal_patch_size=2,
        window_size=config.image_size,  # one window: no reordering
        fullatt_block_indexes=[config.vision_layers - 1],
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def toy_image_processor(config: QwenBaseConfig):
    """Qwen's image processor with the toy grid pinned: every toy image becomes the same patches."""
    pixels = config.image_size * config.image_size
    settings = {
        **preprocessor_config("qwen2_5_vl"),
        "patch_size": config.patch_size,
        "merge_size": config.merge_size,
        "min_pixels": pixels,
        "max_pixels": pixels,
    }
    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(scratch, "preprocessor_config.json"), "w") as handle:
            json.dump(settings, handle)
        return load_image_processor(scratch)


def image_tokens(config: QwenBaseConfig) -> int:
    return (config.image_size // (config.patch_size * config.merge_size)) ** 2


class ImageBatches(torch.nn.Module):
    """The model behind base_model.train_llava's batches: each image's patches stacked per sample
    ([batch, patches, features]) are flattened into Qwen's [all patches, features] with every image's grid."""

    def __init__(self, model, grid: torch.Tensor):
        super().__init__()
        self.model, self.grid = model, grid

    def forward(self, pixel_values, **inputs):
        grid = self.grid.expand(len(pixel_values), 3)
        return self.model(**inputs, pixel_values=pixel_values.flatten(0, 1), image_grid_thw=grid)


def pretrain_vision_encoder(model, pixels, grid, labels, config: QwenBaseConfig, log=print) -> float:
    """Stage 1: multi-label presence from the mean of the encoder's output before the merger; then the encoder's
    blocks are frozen (the merger stays trainable). Returns the last epoch's accuracy per image and category."""
    visual = model.model.visual
    encoder = [*visual.patch_embed.parameters(), *visual.blocks.parameters()]
    head = torch.nn.Linear(config.vision_hidden_size, labels.shape[1])
    optimizer = torch.optim.AdamW([*encoder, *head.parameters()], lr=config.tower_learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    visual.train()
    for epoch in range(config.tower_epochs):
        order = torch.randperm(len(pixels), generator=generator)
        correct, total_loss, start = 0.0, 0.0, time.perf_counter()
        for offset in range(0, len(order), config.batch_size):
            indices = order[offset : offset + config.batch_size]
            batch = pixels[indices]
            hidden = visual(batch.flatten(0, 1), grid_thw=grid.expand(len(batch), 3)).last_hidden_state
            logits = head(hidden.reshape(len(batch), -1, hidden.shape[-1]).mean(1))
            loss = F.binary_cross_entropy_with_logits(logits, labels[indices])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += loss.item() * len(indices)
            correct += ((logits > 0).float() == labels[indices]).float().mean(1).sum().item()
        accuracy = correct / len(pixels)
        log(
            f"encoder epoch {epoch + 1}/{config.tower_epochs}: loss {total_loss / len(pixels):.4f}, "
            f"presence accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)"
        )
    for parameter in encoder:
        parameter.requires_grad_(False)
    visual.eval()
    return accuracy


def train_qwen_base_model(world: str, out: str, config: QwenBaseConfig = QwenBaseConfig(), log=print) -> dict:
    """Train on the world's `llava/toy_instruct.json` (images in `coco/train2014`, their objects in
    `coco/annotations/instances_train2014.json`) and save a folder in the hub's layout that
    `load_pretrained_model` opens: a plain Qwen2.5-VL, its tokenizer with the chat template, its image processor."""
    return train_deterministically(_train_and_save, world, out, config, log)


def _train_and_save(world: str, out: str, config: QwenBaseConfig, log) -> dict:
    samples, skips = read_world_conversations(world, "toy Qwen conversations")
    tokenizer = train_tiny_qwen_tokenizer(vocab_size=config.tokenizer_vocab, corpus=conversation_texts(samples))
    image_processor = toy_image_processor(config)
    model = QWEN2_5_VL.model_class(QWEN2_5_VL.with_block(toy_qwen_config(config, tokenizer)))

    inputs = QWEN2_5_VL.image_inputs([open_image(sample.image) for sample in samples], image_processor)
    grid = inputs["image_grid_thw"][:1]
    if not (inputs["image_grid_thw"] == grid).all():
        raise ValueError("the toy images do not all get the same grid: check min_pixels / max_pixels")
    pixels = inputs["pixel_values"].reshape(len(samples), -1, inputs["pixel_values"].shape[-1])

    start = time.perf_counter()
    labels = world_presence_labels(world, samples)
    encoder_accuracy = pretrain_vision_encoder(model, pixels, grid, labels, config, log)
    encoder_seconds = time.perf_counter() - start

    image_token_id = model.config.image_token_id
    dataset = SupervisedDataset(
        samples, tokenizer, image_token_id, image_tokens(config), 2048, skips, check_images=False, conv_mode=CONV_MODE
    )
    items = [dataset[index] for index in range(len(dataset))]  # strict skips: one item per sample, in order
    rows = [(item["input_ids"], item["labels"], pixels[index]) for index, item in enumerate(items)]
    start = time.perf_counter()
    losses = train_llava(ImageBatches(model, grid), rows, config, tokenizer.pad_token_id, log)
    llm_seconds = time.perf_counter() - start

    plain = Qwen2_5_VLForConditionalGeneration(toy_qwen_config(config, tokenizer))  # the hub's model type
    plain.load_state_dict(model.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    save_model_folder(plain, tokenizer, image_processor, out)
    summary = {
        "config": asdict(config),
        "conversations": len(rows),
        "encoder_presence_accuracy": round(encoder_accuracy, 4),
        "epoch_losses": [round(loss, 4) for loss in losses],
    }
    write_training_summary(out, summary)
    return {**summary, "encoder_seconds": round(encoder_seconds, 1), "llm_seconds": round(llm_seconds, 1)}
