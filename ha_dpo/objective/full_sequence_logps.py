"""Sequence log-probs the usual way (HA-DPO, TRL): every pair becomes two full sequences, prompt +
chosen and prompt + rejected, run through the whole model with full-vocabulary logits.

The shared-backbone path (pair_logps.py) cannot be used when the backbone itself is trained (the
LoRA baseline); this is also what the training benchmark compares against.
"""

import torch


def concatenated_pairs(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows chosen_0, rejected_0, chosen_1, ...: the prompt without its left padding, then the answer,
    right-padded. Returns (input_ids, attention_mask, labels) with labels -100 off the answers."""
    rows, answer_starts = [], []
    prompts = zip(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    chosen = zip(batch["chosen_input_ids"], batch["chosen_attention_mask"])
    rejected = zip(batch["rejected_input_ids"], batch["rejected_attention_mask"])
    for (prompt, prompt_mask), pair in zip(prompts, zip(chosen, rejected)):
        prompt = prompt[prompt_mask.bool()]
        for answer, answer_mask in pair:
            rows.append(torch.cat([prompt, answer[answer_mask.bool()]]))
            answer_starts.append(len(prompt))
    width = max(len(row) for row in rows)
    input_ids = rows[0].new_full((len(rows), width), pad_id)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for index, (row, start) in enumerate(zip(rows, answer_starts)):
        input_ids[index, : len(row)] = row
        attention_mask[index, : len(row)] = 1
        labels[index, start : len(row)] = row[start:]
    return input_ids, attention_mask, labels


def full_sequence_logps(model, batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (chosen/rejected interleaved): the sum of log p(answer token), and the mean logit at the
    answer tokens' own positions. One image per pair, repeated for its two sequences."""
    input_ids, attention_mask, labels = concatenated_pairs(batch, pad_id)
    pixel_values = batch.get("pixel_values")
    if pixel_values is not None:
        pixel_values = pixel_values.repeat_interleave(2, 0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits.float()
    # HA-DPO's `logits/chosen`: the logits at the answer tokens' own positions (unshifted labels).
    own = labels != -100
    mean_logits = (logits.detach().mean(-1) * own).sum(-1) / own.sum(-1)
    labels, logits = labels[:, 1:], logits[:, :-1]  # position t predicts token t + 1
    mask = labels != -100
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (token_logps * mask).sum(-1), mean_logits
