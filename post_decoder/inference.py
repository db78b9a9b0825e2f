"""Ask a loaded model a question about an image, in one call.

    from post_decoder.builder import load_pretrained_model
    from post_decoder.inference import answer

    tokenizer, model, image_processor, _ = load_pretrained_model("runs/stage1/merged")
    print(answer(model, tokenizer, image_processor, "photo.jpg", "Is there a dog in the image?"))

The prompt is the model's family's single-turn template (`conv_mode`; LLaVA-1.5's are in
`post_decoder/families/llava/conversation.py`, Qwen-VL's is its chat template), the image goes through the
family's preprocessing (LLaVA-1.5's `pad`; Qwen-VL's dynamic resolution, each image its own number of tokens;
InstructBLIP's Q-Former also reads each image's question: `family.prompt_inputs`), and the answer is
`model.generate`'s: greedy with at most 128 new tokens unless `generation_kwargs` say otherwise (LLaVA's defaults).
`answer_batch` asks many questions at once, left-padded in batches, with the same answers.
"""

import os

import torch
from PIL import Image

from .errors import InputError
from .family import family_for
from .images import model_image_inputs, open_image

DEFAULT_GENERATION = {"do_sample": False, "max_new_tokens": 128}  # LLaVA's evaluation: temperature 0, 128 tokens


def answer(
    model, tokenizer, image_processor, image, question: str, conv_mode: str | None = None, **generation_kwargs
) -> str:
    """The model's answer to `question` about `image` (a PIL image, a path, or None for a text-only
    question). `generation_kwargs` go to `model.generate`, e.g. `max_new_tokens=16` or
    `do_sample=True, temperature=0.7`."""
    return answer_batch(
        model, tokenizer, image_processor, [image], [question], batch_size=1, conv_mode=conv_mode, **generation_kwargs
    )[0]


def answer_batch(
    model,
    tokenizer,
    image_processor,
    images: list,
    questions: list[str],
    batch_size: int = 8,
    conv_mode: str | None = None,
    **generation_kwargs,
) -> list[str]:
    """One answer per (image, question) pair, generated `batch_size` pairs at a time (left-padded;
    an image may be None for a text-only question). Greedy answers equal `answer`'s one by one."""
    if len(images) != len(questions):
        raise InputError(
            f"answer_batch got {len(images)} images and {len(questions)} questions: "
            "pass one image (or None) per question"
        )
    if batch_size < 1:
        raise InputError(f"batch_size is {batch_size}: pass 1 or more")
    # A generation_config the caller passes is taken whole, not overridden by our defaults.
    defaults = {} if "generation_config" in generation_kwargs else DEFAULT_GENERATION
    settings = {**defaults, "pad_token_id": _pad_token_id(tokenizer), **generation_kwargs}
    max_new_tokens = (
        settings.get("max_new_tokens") or getattr(settings.get("generation_config"), "max_new_tokens", None) or 0
    )
    if settings.get("num_return_sequences", 1) != 1:
        raise InputError("num_return_sequences must be 1: answer_batch returns one answer per question")
    family = family_for(model)
    conv_mode = conv_mode or family.default_conv_mode_for(model.config)
    prompts = [
        _question_prompt(family, question, image is not None, conv_mode, index)
        for index, (image, question) in enumerate(zip(images, questions))
    ]
    for index, image in enumerate(images):  # a wrong path fails now, not after the batches before it
        _check_image(image, index)
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = range(start, min(start + batch_size, len(prompts)))
        pictures = [None if images[index] is None else _as_image(images[index], index) for index in batch]
        image_inputs, counts = _image_inputs(model, image_processor, pictures)
        if counts:  # what the family reads from each image's question (InstructBLIP's Q-Former tokens)
            asked = [questions[index] for index, picture in zip(batch, pictures) if picture is not None]
            from_prompts = family.prompt_inputs(asked, image_processor)
            image_inputs.update({name: value.to(model.device) for name, value in from_prompts.items()})
        ids = []
        for index, picture in zip(batch, pictures):  # each image's own token count, in order
            image_tokens = [] if picture is None else [counts.pop(0)]
            ids.append(_prompt_ids(model, tokenizer, prompts[index], image_tokens, max_new_tokens, index))
        answers += _generate(model, tokenizer, ids, image_inputs, settings)
    return answers


def _pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _question_prompt(family, question, with_image: bool, conv_mode: str | None, index: int) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"question {index} is empty ({question!r}): pass the text to ask")
    return family.question_prompt(question, with_image, conv_mode=conv_mode)


def _image_inputs(model, image_processor, pictures: list) -> tuple[dict, list[int]]:
    """The model inputs of a batch's images (those not None, in order) and each one's token count."""
    with_image = [picture for picture in pictures if picture is not None]
    if not with_image:
        return {}, []
    inputs = model_image_inputs(model, image_processor, with_image)
    return inputs, family_for(model).image_token_counts(model.config, inputs)


def _prompt_ids(model, tokenizer, prompt: str, image_tokens, max_new_tokens: int, index: int) -> list[int]:
    config, family = model.config, family_for(model)
    ids = family.tokenize_prompt(prompt, tokenizer, config, image_tokens=image_tokens)
    context = config.text_config.max_position_embeddings
    if len(ids) + max_new_tokens > context:
        raise InputError(
            f"question {index} takes {len(ids)} tokens with the template and image, and {max_new_tokens} more are "
            f"kept for the answer: over the model's context of {context}; shorten the question or lower max_new_tokens"
        )
    return ids


def _check_image(image, index: int):
    if image is None or isinstance(image, Image.Image):
        return
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(
            f"image {index} is a {type(image).__name__}: "
            "pass a PIL image, a file path, or None for a text-only question"
        )
    if not os.path.isfile(image):
        raise InputError(f"image {index}: {os.fspath(image)} does not exist; pass an image file's path")


def _as_image(image, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    try:
        return open_image(os.fspath(image))
    except (FileNotFoundError, ValueError) as error:
        raise InputError(f"image {index}: {error}; pass a JPEG, PNG or WebP file") from error


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[list[int]], image_inputs: dict, settings: dict) -> list[str]:
    pad, width = settings["pad_token_id"], max(map(len, prompts))
    rows = [[pad] * (width - len(ids)) + ids for ids in prompts]  # left padding: every row's answer starts at `width`
    masks = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]
    input_ids = torch.tensor(rows, device=model.device)
    attention_mask = torch.tensor(masks, device=model.device)
    # The images' inputs in order (the model matches them to the image tokens), and the positions the family gives
    # the prompt (M-RoPE's follow each image's grid); generate numbers the answer on from them.
    position_ids = family_for(model).prompt_position_ids(model, input_ids, attention_mask, image_inputs or None)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **image_inputs}
    output = model.generate(**inputs, **settings)
    return [text.strip() for text in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
