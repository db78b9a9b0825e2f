"""Train the toy world's base model: a tiny LLaVA-1.5 (tiny CLIP tower + tiny Llama) from scratch,
on the world's LLaVA-format conversations, whose text carries the co-occurrence bias.

Every part learns (tower, projector, LLM), so the tower's features tell the partner's presence
while the LLM learns to affirm an absent partner next to its anchor. Text follows LLaVA-1.5's
template exactly (`post_decoder.conversation`); the loss is on the answers (and their `</s>`) only.
"""

import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
from transformers import LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

from post_decoder.conversation import IMAGE_TOKEN, Conversation, add_llava_tokens, tokenize_with_image
from post_decoder.image_processing import load_image_processor, open_image, preprocess_images
from post_decoder.saving import save_model_folder
from post_decoder.tiny import clip_preprocessor_config, tiny_llava_config, train_tiny_tokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BaseModelConfig:
    seed: int = 0
    tokenizer_pieces: int = 512  # SentencePiece vocabulary, the 256 byte pieces included
    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    threads: int = 2


@dataclass
class Sample:
    image: str  # path
    turns: list[tuple[str, str]]  # (question, answer); the image goes with the first question


def read_llava_conversations(path: str, image_folder: str) -> list[Sample]:
    """LLaVA's instruction json: [{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}],
    human and gpt alternating, the first human turn starting with "<image>\\n"."""
    with open(path) as handle:
        records = json.load(handle)
    samples = []
    for index, record in enumerate(records):
        where = f"{path}: record {index} (id {record.get('id')!r})"
        turns = record.get("conversations") or []
        if "image" not in record or not turns or len(turns) % 2:
            raise ValueError(f"{where}: needs an image and an even, non-empty list of conversations")
        if [turn["from"] for turn in turns] != ["human", "gpt"] * (len(turns) // 2):
            raise ValueError(f"{where}: turns must alternate human, gpt")
        first = turns[0]["value"]
        if not first.startswith(IMAGE_TOKEN + "\n") or any(IMAGE_TOKEN in turn["value"] for turn in turns[1:]):
            raise ValueError(f"{where}: the image must open the first human turn as '<image>\\n', and only there")
        questions = [first[len(IMAGE_TOKEN) + 1 :]] + [turn["value"] for turn in turns[2::2]]
        answers = [turn["value"] for turn in turns[1::2]]
        samples.append(Sample(os.path.join(image_folder, record["image"]), list(zip(questions, answers))))
    return samples


def conversation_prompt(turns: list[tuple[str, str]]) -> str:
    conversation = Conversation()
    for index, (question, answer) in enumerate(turns):
        conversation.add_user(question, with_image=index == 0).add_assistant(answer)
    return conversation.prompt()


def encode(turns: list[tuple[str, str]], tokenizer, image_token_id: int, image_seq_length: int) -> tuple[list[int], list[int]]:
    """Input ids and labels: each answer's tokens and its `</s>`; everything else IGNORE_INDEX.
    An answer's span is found by tokenizing the text before and after it, which must be prefixes
    of the whole conversation's ids (true for SentencePiece, which never merges across spaces)."""

    def ids(text):
        return tokenize_with_image(text, tokenizer, image_token_id, image_seq_length)

    full = ids(conversation_prompt(turns))
    labels = [IGNORE_INDEX] * len(full)
    for index in range(len(turns)):
        before = conversation_prompt(turns[:index] + [(turns[index][0], None)])
        after = conversation_prompt(turns[: index + 1])
        start, end = ids(before), ids(after)
        if full[: len(start)] != start or full[: len(end)] != end:
            raise ValueError(f"turn {index} of {turns!r} does not tokenize as a prefix of its conversation")
        labels[len(start) : len(end)] = full[len(start) : len(end)]
    return full, labels


def tokenizer_corpus(samples: list[Sample]) -> list[str]:
    return [conversation_prompt(sample.turns).replace(IMAGE_TOKEN + "\n", "") for sample in samples]


def build_model(config: BaseModelConfig, text_vocab_size: int) -> LlavaForConditionalGeneration:
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


def collate(rows: list[tuple[list[int], list[int], torch.Tensor]], pad_id: int) -> dict:
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, targets, _) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(targets)
        attention_mask[row, : len(ids)] = 1
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


def train(model, rows, config: BaseModelConfig, pad_id: int, log=print):
    """AdamW with warmup and cosine decay, every parameter trained. Returns the model (in eval
    mode) and the mean loss per epoch."""
    generator = random.Random(config.seed)
    lengths = [len(ids) for ids, _, _ in rows]
    steps_per_epoch = len(length_grouped_batches(lengths, config.batch_size, random.Random(0)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, steps_per_epoch * config.epochs)
    model.train()
    epoch_losses = []
    for epoch in range(config.epochs):
        total, start = 0.0, time.perf_counter()
        for indices in length_grouped_batches(lengths, config.batch_size, generator):
            batch = collate([rows[index] for index in indices], pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
        epoch_losses.append(total / steps_per_epoch)
        log(f"epoch {epoch + 1}/{config.epochs}: loss {epoch_losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)")
    return model.eval(), epoch_losses


def train_base_model(world: str, out: str, config: BaseModelConfig = BaseModelConfig(), max_samples: int | None = None, log=print) -> dict:
    """Train on `world`/llava/toy_instruct.json (images in coco/train2014) and save a folder that
    `load_pretrained_model` opens (weights, config, tokenizer with <image> and <pad>, processor)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    samples = read_llava_conversations(os.path.join(world, "llava", "toy_instruct.json"), os.path.join(world, "coco", "train2014"))
    samples = samples[:max_samples]
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tiny_tokenizer(os.path.join(scratch, "tokenizer"), tokenizer_corpus(samples), config.tokenizer_pieces)
        text_vocab_size = len(tokenizer)
        tokenizer = add_llava_tokens(tokenizer)
        with open(os.path.join(scratch, "preprocessor_config.json"), "w") as handle:
            json.dump(clip_preprocessor_config(config.image_size), handle)
        image_processor = load_image_processor(scratch)
    model = build_model(config, text_vocab_size)
    image_token_id, image_seq_length = model.config.image_token_id, model.config.image_seq_length
    pixels = preprocess_images([open_image(sample.image) for sample in samples], image_processor)
    rows = [(*encode(sample.turns, tokenizer, image_token_id, image_seq_length), pixels[index]) for index, sample in enumerate(samples)]
    start = time.perf_counter()
    model, losses = train(model, rows, config, tokenizer.pad_token_id, log)
    seconds = time.perf_counter() - start
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model_folder(model, tokenizer, image_processor, out)
    summary = {"config": asdict(config), "samples": len(rows), "epoch_losses": losses, "train_seconds": round(seconds, 1)}
    with open(os.path.join(out, "training_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary
