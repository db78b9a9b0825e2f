"""Sequence log-probs the usual way (HA-DPO, TRL): every pair becomes two full sequences, prompt +
chosen and prompt + rejected, run through the whole model with full-vocabulary logits.

The shared-backbone path (pair_logps.py) cannot be used when the backbone itself is trained (the
LoRA baseline); this is also what the training benchmark compares against.
"""

import torch

from ..data.collators import PREFERENCE_TEXT_KEYS, image_inputs_of, repeated_images
from ..data.token_ids import IGNORE_INDEX, pad_and_mask


def concatenated_pairs(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows chosen_0, rejected_0, chosen_1, ...: the prompt without its left padding, then the answer,
    right-padded. Returns (input_ids, attention_mask, labels) with labels IGNORE_INDEX off the answers."""
    rows, label_rows = [], []
    prompts = zip(batch["prompt_input_ids"], batch["prompt_attention_mask"], strict=True)
    chosen = zip(batch["chosen_input_ids"], batch["chosen_attention_mask"], strict=True)
    rejected = zip(batch["rejected_input_ids"], batch["rejected_attention_mask"], strict=True)
    for (prompt, prompt_mask), pair in zip(prompts, zip(chosen, rejected, strict=True), strict=True):
        prompt = prompt[prompt_mask.bool()]
        for answer, answer_mask in pair:
            answer = answer[answer_mask.bool()]
            rows.append(torch.cat([prompt, answer]))
            label_rows.append(torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]))
    input_ids, attention_mask = pad_and_mask(rows, pad_id)
    labels, _ = pad_and_mask(label_rows, IGNORE_INDEX)
    return input_ids, attention_mask, labels


def full_sequence_logps(model, batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (chosen/rejected interleaved): the sum of log p(answer token), and the mean logit at the
    answer tokens' own positions. Each pair's images serve its two sequences: the model runs the chosen
    rows, then the rejected rows (in one batch), with the batch's image inputs twice (`repeated_images`), and
    the rows are put back in the interleaved order."""
    input_ids, attention_mask, labels = concatenated_pairs(batch, pad_id)
    rows, device = len(input_ids), input_ids.device
    by_answer = torch.cat([torch.arange(0, rows, 2, device=device), torch.arange(1, rows, 2, device=device)])
    image_inputs = repeated_images(image_inputs_of(batch, PREFERENCE_TEXT_KEYS))
    logits = model(
        input_ids=input_ids[by_answer], attention_mask=attention_mask[by_answer], **image_inputs
    ).logits.float()[torch.argsort(by_answer)]
    # HA-DPO's `logits/chosen`: the logits at the answer tokens' own positions (unshifted labels).
    own = labels != IGNORE_INDEX
    mean_logits = (logits.detach().mean(-1) * own).sum(-1) / own.sum(-1)
    labels, logits = labels[:, 1:], logits[:, :-1]  # position t predicts token t + 1
    mask = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (token_logps * mask).sum(-1), mean_logits
