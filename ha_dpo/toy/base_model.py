"""Train the toy world's base model from scratch: a tiny LLaVA-1.5 (tiny CLIP tower + tiny Llama)
whose LLM learns the co-occurrence bias of its training text while its tower sees the truth.

Two stages, as LLaVA-1.5 is built:
  1. the tower is pretrained to see (LLaVA's CLIP comes pretrained): a linear head on the mean of
     the patch features that LLaVA uses (layer -2, CLS dropped) predicts which categories are in
     the image, from the COCO instance annotations. A tower trained only through the LLM's loss
     learns nothing in a CPU budget: the LLM settles on the text prior first and never looks.
  2. the tower is frozen (as LLaVA-1.5 keeps CLIP frozen); the projector and the LLM learn the
     LLaVA-format conversations, whose text names a partner next to its anchor whether or not it is there.
So the features the post-decoder block reads say whether the partner is there, and the model
still says it is: the hallucination the block is trained to correct.
"""

import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from transformers import LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

from post_decoder.atomic_files import atomic_file
from post_decoder.families.llava.conversation import IMAGE_TOKEN, Conversation, add_llava_tokens
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config, tiny_llava_config, train_tiny_tokenizer
from post_decoder.family import family_for
from post_decoder.images import open_image, preprocess_images
from post_decoder.saving import save_model_folder

from ..data.llava_data import SupervisedDataset, read_llava_samples
from ..data.skips import SkipCounter
from ..data.token_ids import IGNORE_INDEX, pad_and_mask


@dataclass(frozen=True)
class BaseModelConfig:
    seed: int = 0
    tokenizer_pieces: int = 512  # SentencePiece vocabulary, the 256 byte pieces included
    image_size: int = 64
    patch_size: int = 16  # the toy world's grid cell: one object, one patch
    vision_hidden_size: int = 64
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
    threads: int = 2


def untrained_toy_llava(config: BaseModelConfig, text_vocab_size: int) -> LlavaForConditionalGeneration:
    """LLaVA-1.5's shape in miniature, with transformers' standard initialisation."""
    torch.manual_seed(config.seed)
    llava_config = tiny_llava_config(
        text_vocab_size,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_hidden_size=config.vision_hidden_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
    )
    return LlavaForConditionalGeneration(llava_config)


def presence_labels(instances_path: str, file_names: list[str]) -> torch.Tensor:
    """[images, categories] 0/1: which categories the COCO annotations put in each image."""
    coco = COCO(instances_path)
    by_file = {image["file_name"]: image["id"] for image in coco.loadImgs(coco.getImgIds())}
    category_ids = sorted(coco.getCatIds())
    column = {category_id: index for index, category_id in enumerate(category_ids)}
    labels = torch.zeros(len(file_names), len(category_ids))
    for row, name in enumerate(file_names):
        if name not in by_file:
            raise ValueError(f"{instances_path} has no image {name!r} (named by the training conversations)")
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=by_file[name])):
            labels[row, column[annotation["category_id"]]] = 1
    return labels


def tokenizer_corpus(samples) -> list[str]:
    """The training conversations as LLaVA-1.5 prompts, without the image placeholder."""
    return [Conversation(messages=list(sample.turns)).prompt().replace(IMAGE_TOKEN + "\n", "") for sample in samples]


def collate(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int) -> dict:
    """Right-padded ids, mask and labels; the images' pixel values, preprocessed once beforehand."""
    input_ids, attention_mask = pad_and_mask([ids for ids, _, _ in rows], pad_id)
    labels, _ = pad_and_mask([targets for _, targets, _ in rows], IGNORE_INDEX)
    pixel_values = torch.stack([pixels for _, _, pixels in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def length_grouped_batches(lengths: list[int], batch_size: int, generator: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding): shuffle, sort within windows of 16
    batches, cut, shuffle the batches."""
    order = list(range(len(lengths)))
    generator.shuffle(order)
    window = 16 * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda index: lengths[index])
        batches += [chunk[offset : offset + batch_size] for offset in range(0, len(chunk), batch_size)]
    generator.shuffle(batches)
    return batches


def llava_vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The tower's features that LLaVA projects (and the block reads): layer -2, CLS dropped."""
    hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden_states[model.config.vision_feature_layer][:, 1:]


def pretrain_vision_tower(
    model, pixels: torch.Tensor, labels: torch.Tensor, config: BaseModelConfig, log=print, on_step=None, max_steps=None
) -> float:
    """Stage 1: multi-label presence from the mean patch feature; then the tower is frozen.
    Returns the training accuracy (per image and category) of the last epoch. `on_step(loss)` sees
    every step's loss; `max_steps` stops early (quick checks of the first steps)."""
    tower = model.model.vision_tower
    head = torch.nn.Linear(config.vision_hidden_size, labels.shape[1])
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=config.tower_learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    tower.train()
    steps = 0
    for epoch in range(config.tower_epochs):
        order = torch.randperm(len(pixels), generator=generator)
        correct, total_loss, seen, start = 0.0, 0.0, 0, time.perf_counter()
        for offset in range(0, len(order), config.batch_size):
            if max_steps is not None and steps == max_steps:
                break
            indices = order[offset : offset + config.batch_size]
            logits = head(llava_vision_features(model, pixels[indices]).mean(1))
            loss = F.binary_cross_entropy_with_logits(logits, labels[indices])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            seen += len(indices)
            total_loss += loss.item() * len(indices)
            correct += ((logits > 0).float() == labels[indices]).float().mean(1).sum().item()
            if on_step is not None:
                on_step(loss.item())
        accuracy = correct / max(seen, 1)
        log(
            f"tower epoch {epoch + 1}/{config.tower_epochs}: loss {total_loss / max(seen, 1):.4f}, "
            f"presence accuracy {accuracy:.4f} ({time.perf_counter() - start:.0f} s)"
        )
        if max_steps is not None and steps == max_steps:
            break
    tower.requires_grad_(False)
    tower.eval()
    return accuracy


def train_llava(
    model, rows, config: BaseModelConfig, pad_id: int, log=print, on_step=None, max_steps=None
) -> list[float]:
    """Stage 2: AdamW with warmup and cosine decay on every parameter still trainable (projector
    and LLM). Returns the mean loss per epoch. `on_step` and `max_steps` as in stage 1."""
    generator = random.Random(config.seed)
    lengths = [len(ids) for ids, _, _ in rows]
    steps_per_epoch = len(length_grouped_batches(lengths, config.batch_size, random.Random(0)))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, steps_per_epoch * config.epochs)
    model.train()
    epoch_losses, steps = [], 0
    for epoch in range(config.epochs):
        total, taken, start = 0.0, 0, time.perf_counter()
        for indices in length_grouped_batches(lengths, config.batch_size, generator):
            if max_steps is not None and steps == max_steps:
                break
            loss = model(**collate([rows[index] for index in indices], pad_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            taken += 1
            total += loss.item()
            if on_step is not None:
                on_step(loss.item())
        epoch_losses.append(total / max(taken, 1))
        log(
            f"llava epoch {epoch + 1}/{config.epochs}: loss {epoch_losses[-1]:.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        if max_steps is not None and steps == max_steps:
            break
    model.eval()
    return epoch_losses


def train_tokenizer(samples, config: BaseModelConfig):
    """A SentencePiece tokenizer trained on the conversations, with LLaVA's <image> and <pad> added;
    and the size of its text vocabulary (the LLM's embedding rows before those two)."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tiny_tokenizer(
            os.path.join(scratch, "tokenizer"), tokenizer_corpus(samples), config.tokenizer_pieces
        )
        text_vocab_size = len(tokenizer)  # before add_llava_tokens, which adds to this tokenizer
        return add_llava_tokens(tokenizer), text_vocab_size


def toy_image_processor(config: BaseModelConfig):
    """CLIP's preprocessing at the toy image size."""
    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(scratch, "preprocessor_config.json"), "w") as handle:
            json.dump(clip_preprocessor_config(config.image_size), handle)
        return load_image_processor(scratch)


def training_rows(
    samples, tokenizer, model, pixels: torch.Tensor, skips
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input ids, labels, pixel values) per conversation, in order."""
    config, family = model.config, family_for(model)
    image_token_id, image_tokens = family.image_token_id(config), family.image_token_count(config)
    dataset = SupervisedDataset(samples, tokenizer, image_token_id, image_tokens, 2048, skips, check_images=False)
    items = [dataset[index] for index in range(len(dataset))]  # strict skips: one item per sample, in order
    return [(item["input_ids"], item["labels"], pixels[index]) for index, item in enumerate(items)]


def train_base_model(world: str, out: str, config: BaseModelConfig = BaseModelConfig(), log=print) -> dict:
    """Train on the world's `llava/toy_instruct.json` (images in `coco/train2014`, their objects in
    `coco/annotations/instances_train2014.json`) and save a folder that `load_pretrained_model`
    opens: weights, config, the tokenizer with <image> and <pad>, the image processor."""
    return train_deterministically(_train_and_save, world, out, config, log)


def train_deterministically(train_and_save, world: str, out: str, config, log) -> dict:
    """`train_and_save(world, out, config, log)` seeded with `config.seed`, on `config.threads` threads with
    deterministic algorithms (the same seed writes the same bytes); the caller's settings come back after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        return train_and_save(world, out, config, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def read_world_conversations(world: str, what: str) -> tuple[list, SkipCounter]:
    """The world's `llava/toy_instruct.json` (images in `coco/train2014`), and the strict skip counter that read
    it: generated data, so any bad sample is a bug."""
    skips = SkipCounter(what, strict=True)
    samples = read_llava_samples(
        os.path.join(world, "llava", "toy_instruct.json"), os.path.join(world, "coco", "train2014"), skips=skips
    )
    return samples, skips


def world_presence_labels(world: str, samples) -> torch.Tensor:
    """[samples, categories] 0/1 from the world's `coco/annotations/instances_train2014.json`."""
    instances = os.path.join(world, "coco", "annotations", "instances_train2014.json")
    return presence_labels(instances, [os.path.basename(sample.image) for sample in samples])


def write_training_summary(out: str, summary: dict) -> None:
    """`{out}/training_summary.json`; timings stay out of it, so the same seed writes the same bytes."""
    with atomic_file(os.path.join(out, "training_summary.json")) as temporary, open(temporary, "w") as handle:
        json.dump(summary, handle, indent=2)


def _train_and_save(world: str, out: str, config: BaseModelConfig, log) -> dict:
    samples, skips = read_world_conversations(world, "toy LLaVA conversations")
    tokenizer, text_vocab_size = train_tokenizer(samples, config)
    image_processor = toy_image_processor(config)
    model = untrained_toy_llava(config, text_vocab_size)
    pixels = preprocess_images([open_image(sample.image) for sample in samples], image_processor)

    start = time.perf_counter()
    labels = world_presence_labels(world, samples)
    tower_accuracy = pretrain_vision_tower(model, pixels, labels, config, log)
    tower_seconds = time.perf_counter() - start

    rows = training_rows(samples, tokenizer, model, pixels, skips)
    start = time.perf_counter()
    losses = train_llava(model, rows, config, tokenizer.pad_token_id, log)
    llava_seconds = time.perf_counter() - start

    model.requires_grad_(True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model_folder(model, tokenizer, image_processor, out)
    summary = {
        "config": asdict(config),
        "conversations": len(rows),
        "tower_presence_accuracy": round(tower_accuracy, 4),
        "llava_epoch_losses": [round(loss, 4) for loss in losses],
    }
    write_training_summary(out, summary)
    return {**summary, "tower_seconds": round(tower_seconds, 1), "llava_seconds": round(llava_seconds, 1)}
