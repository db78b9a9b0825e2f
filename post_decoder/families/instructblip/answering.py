"""Many questions about one image, as POPE asks them (18 per image), for InstructBLIP.

LLaVA's evaluator shares an image's prompt prefix across its questions (`eval/answering.py`). InstructBLIP's cannot:
its Q-Former reads the question, so the 32 query outputs at the start of the prompt differ from question to
question. What can be shared is the vision encoder's output (EVA ViT-g, by far the largest cost before the language
model): the image is encoded once, then each batch of its questions runs the Q-Former and the language model,
left-padded. Greedy answers equal `model.generate`'s for each question alone.
"""

import torch

from ...family import family_for


@torch.no_grad()
def answer_about_one_image(
    model,
    processor,
    image,
    questions: list[str],
    max_new_tokens: int,
    batch_size: int = 32,
    prompt_suffix: str = "",
    conv_mode: str | None = None,
) -> list[str]:
    """Greedy answers to `questions` about `image` (a PIL image): the vision encoder runs once."""
    family, tokenizer = family_for(model), processor.tokenizer
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    image_embeds = model.encode_images(pixel_values)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for start in range(0, len(questions), batch_size):
        texts = [question + prompt_suffix for question in questions[start : start + batch_size]]
        rows = [
            family.tokenize_prompt(family.question_prompt(text, conv_mode=conv_mode), tokenizer, model.config)
            for text in texts
        ]
        width = max(map(len, rows))
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=model.device)
        qformer = {name: tensor.to(model.device) for name, tensor in family.qformer_inputs(texts, processor).items()}
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds.expand(len(rows), -1, -1),
            **qformer,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        answers += [text.strip() for text in tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)]
    return answers
