"""DPO pairs in the cache: what is stored, and the dataset and collator that serve it to the heads.

Per pair (`pair/<digest of image, prompt, chosen and rejected ids>`), one tensor of rows, D wide:
    the last prompt position, then the chosen answer's positions, then the rejected answer's
    (with `prompt_states`, every prompt position instead of the last one: `transformer_block` reads them)
Per image (`image/<digest of the file>`, with the ids of its question where the family reads them, as
InstructBLIP's Q-Former does): its vision features [N, Dv], the rows the block's mask keeps.

The rows are those `objective.pair_logps.backbone_pair_states` gives the heads, cut out of the batch the
pair was built in; the collator puts them back in the same places (zeros where a batch pads, which the
heads' masks never read), so the heads get the same tensors as without a cache.
"""

import torch
from torch.utils.data import Dataset

from post_decoder.family import pack_images_per_sample

from ..data.preference_data import PreferenceDataset
from ..data.token_ids import expanded_length, pad_and_mask
from ..objective.pair_logps import STATES_KEY, backbone_pair_states
from .identity import PREFERENCE
from .keys import entry_key, image_key


class PreferenceSource:
    """The keys of a `PreferenceDataset`'s pairs and what a build stores for them. (Reads the dataset's
    tokenized `items` directly, so the images are not opened to find a key.)"""

    kind = PREFERENCE
    unit = "pairs"

    def __init__(self, dataset: PreferenceDataset, collator, digests: dict[str, str], prompt_states: bool):
        self.dataset, self.collator, self.prompt_states = dataset, collator, prompt_states
        self.lengths, self.entry_keys, self.image_keys, self.image_token_counts = [], [], [], []
        for sample, prompt, chosen, rejected in dataset.items:
            digest = digests[sample.image] if sample.image else None
            counts = dataset.image_counts(sample)
            prompt_length = expanded_length(prompt, dataset.image_token_id, counts)
            self.lengths.append((prompt_length, len(chosen), len(rejected)))
            # The image's own count in the key (LLaVA's: the one count of every image), and the ids the family
            # reads from the question beside the image (InstructBLIP's Q-Former: the image's tokens depend on them).
            image_tokens = dataset.image_tokens.key(sample.image)
            read = collator.image_inputs.prompt_key_ids(dataset.prompt_text(sample)) if digest else []
            self.entry_keys.append(entry_key("pair", digest, prompt, chosen, rejected, image_tokens, *read))
            self.image_keys.append(image_key(digest, *read) if digest else None)
            self.image_token_counts.append(sum(counts))

    def __len__(self) -> int:
        return len(self.dataset)

    def keys_of(self, index: int) -> list[str]:
        return [key for key in (self.entry_keys[index], self.image_keys[index]) if key]

    def rows(self, index: int) -> int:
        prompt, chosen, rejected = self.lengths[index]
        return (prompt if self.prompt_states else 1) + chosen + rejected

    def batch(self, indices: list[int]) -> dict:
        return self.collator([self.dataset[index] for index in indices])

    def entries(self, model, indices: list[int], batch: dict):
        """(key, tensor) of every entry of the batch's pairs."""
        states = backbone_pair_states(model, batch)
        prompt_mask = batch["prompt_attention_mask"]
        for row, index in enumerate(indices):
            _, chosen, rejected = self.lengths[index]
            chosen_row, rejected_row = states.hidden[2 * row], states.hidden[2 * row + 1]
            if self.prompt_states:
                head = states.prompt_hidden[2 * row][prompt_mask[row].bool()]
            else:
                head = chosen_row[:1]
            yield self.entry_keys[index], torch.cat([head, chosen_row[1 : 1 + chosen], rejected_row[1 : 1 + rejected]])
            if self.image_keys[index]:
                yield self.image_keys[index], states.vision[2 * row][states.vision_mask[2 * row]]


class CachedPreferenceDataset(Dataset):
    """The same items, in the same order, as the `PreferenceDataset` it wraps (so a seed gives the same
    batches), with the backbone's states in place of the prompt's ids and the image."""

    def __init__(self, source: PreferenceSource, store, read_prompt_states: bool):
        self.source, self.store, self.read_prompt_states = source, store, read_prompt_states

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        source = self.source
        _, _, chosen, rejected = source.dataset.items[index]
        prompt_length, chosen_length, rejected_length = source.lengths[index]
        stored_prompt = prompt_length if source.prompt_states else 1
        skipped = stored_prompt - 1 if source.prompt_states and not self.read_prompt_states else 0
        rows = self.store.get(source.entry_keys[index], first_row=skipped)
        if len(rows) != source.rows(index) - skipped:
            raise ValueError(f"{source.entry_keys[index]} has {len(rows)} rows, not {source.rows(index) - skipped}")
        head = stored_prompt - skipped
        image = source.image_keys[index]
        return {
            "chosen_input_ids": torch.from_numpy(chosen).long(),
            "rejected_input_ids": torch.from_numpy(rejected).long(),
            "prompt_length": prompt_length,
            "prompt_states": rows[:head] if self.read_prompt_states else None,
            "last": rows[head - 1],
            "chosen_states": rows[head : head + chosen_length],
            "rejected_states": rows[head + chosen_length :],
            "vision": self.store.get(image) if image else None,
        }


class CachedPreferenceCollator:
    """What `objective.pair_logps.cached_pair_states` reads: the answers' ids and masks padded as
    `PreferenceCollator` pads them, and the states in the places `backbone_pair_states` puts them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        for name in ("chosen", "rejected"):
            ids, mask = pad_and_mask([item[f"{name}_input_ids"] for item in items], self.pad_token_id, "right")
            batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"] = ids, mask
        prompt_rows = [torch.ones(item["prompt_length"], dtype=torch.long) for item in items]
        batch["prompt_attention_mask"] = pad_and_mask(prompt_rows, 0, "left")[1]
        width = 1 + max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
        first = items[0]["last"]
        hidden = first.new_zeros(2 * len(items), width, first.shape[-1])
        for row, item in enumerate(items):
            for offset, answer in enumerate((item["chosen_states"], item["rejected_states"])):
                hidden[2 * row + offset, 0] = item["last"]
                hidden[2 * row + offset, 1 : 1 + len(answer)] = answer
        batch[STATES_KEY] = hidden
        if items[0]["prompt_states"] is not None:
            prompt = first.new_zeros(len(items), batch["prompt_attention_mask"].shape[1], first.shape[-1])
            for row, item in enumerate(items):
                prompt[row, prompt.shape[1] - item["prompt_length"] :] = item["prompt_states"]
            batch["prompt_hidden_states"] = prompt
        batch.update(packed_vision([item["vision"] for item in items]))
        return batch


def packed_vision(per_sample: list) -> dict:
    """`vision_features` [B, L, Dv] and `vision_mask` as the backbone packs them (nothing: no image in the batch)."""
    images = [features for features in per_sample if features is not None]
    if not images:
        return {}
    counts = torch.tensor([0 if features is None else len(features) for features in per_sample])
    features, mask = pack_images_per_sample(images, counts)
    return {"vision_features": features, "vision_mask": mask}
