"""Two preference pairs (a POPE-style question and a description), tokenized as the trainer sees them."""

from post_decoder.families.llava.conversation import question_prompt, tokenize_with_image
from tests.helpers import pad_rows

PAIRS = [
    ("Is there a dog in the image?", "Yes, there is a dog.", "No."),
    (
        "Describe the image in detail.",
        "The image shows a red circle next to a blue square.",
        "There are two cups on a table.",
    ),
]


def tokenized_pairs(model, tokenizer):
    config = model.config
    prompts, chosen, rejected = [], [], []
    for question, good, bad in PAIRS:
        prompts.append(
            tokenize_with_image(question_prompt(question), tokenizer, config.image_token_id, config.image_seq_length)
        )
        chosen.append(tokenizer(good).input_ids[1:] + [tokenizer.eos_token_id])
        rejected.append(tokenizer(bad).input_ids[1:] + [tokenizer.eos_token_id])
    return prompts, chosen, rejected


def make_batch(model, tokenizer, pixel_values):
    prompts, chosen, rejected = tokenized_pairs(model, tokenizer)
    pad = tokenizer.pad_token_id
    batch = {"pixel_values": pixel_values}
    batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows(prompts, "left", pad)
    batch["chosen_input_ids"], batch["chosen_attention_mask"] = pad_rows(chosen, "right", pad)
    batch["rejected_input_ids"], batch["rejected_attention_mask"] = pad_rows(rejected, "right", pad)
    return batch
