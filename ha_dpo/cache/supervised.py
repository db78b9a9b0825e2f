"""SFT samples in the cache: per sample (`sample/<digest of image, ids and answer spans>`), the hidden
states at its label positions (the positions whose next token is an answer token: all the loss reads,
`objective.supervised_loss`), and per image its vision features, as for pairs (preference.py).
`transformer_block` reads every position of a sample and is refused a cache (run.py).
"""

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.llava_data import SupervisedDataset
from ..objective.supervised_loss import STATES_KEY, backbone_label_states, padded_label_states
from .identity import SUPERVISED
from .keys import entry_key, image_key
from .preference import packed_vision


def _targets(ids: np.ndarray, spans) -> np.ndarray:
    """The answer tokens in order: what the label positions predict (a span never starts at position 0)."""
    return np.concatenate([ids[start:end] for start, end in spans])


class SupervisedSource:
    """The keys of a `SupervisedDataset`'s samples and what a build stores for them (reads its tokenized
    `items`, so the images are not opened to find a key)."""

    kind = SUPERVISED
    unit = "samples"
    prompt_states = False

    def __init__(self, dataset: SupervisedDataset, collator, digests: dict[str, str]):
        self.dataset, self.collator = dataset, collator
        self.targets, self.entry_keys, self.image_keys, self.image_token_counts = [], [], [], []
        for sample, ids, spans in dataset.items:
            digest = digests[sample.image] if sample.image else None
            self.targets.append(_targets(ids, spans))
            span_array = np.asarray(spans, dtype=np.int64).reshape(-1)
            image_tokens = dataset.image_tokens.key(sample.image)  # the image's own count (LLaVA's: the one)
            read = collator.image_inputs.prompt_key_ids(dataset.prompt_text(sample)) if digest else []  # as pairs
            self.entry_keys.append(entry_key("sample", digest, ids, span_array, image_tokens, *read))
            self.image_keys.append(image_key(digest, *read) if digest else None)
            self.image_token_counts.append(sum(dataset.image_counts(sample)))

    def __len__(self) -> int:
        return len(self.dataset)

    def keys_of(self, index: int) -> list[str]:
        return [key for key in (self.entry_keys[index], self.image_keys[index]) if key]

    def rows(self, index: int) -> int:
        return len(self.targets[index])

    def batch(self, indices: list[int]) -> dict:
        return self.collator([self.dataset[index] for index in indices])

    def entries(self, model, indices: list[int], batch: dict):
        states = backbone_label_states(model, batch)
        for row, index in enumerate(indices):
            yield self.entry_keys[index], states.hidden[row, : self.rows(index)]
            if self.image_keys[index]:
                yield self.image_keys[index], states.vision[row][states.vision_mask[row]]


class CachedSupervisedDataset(Dataset):
    """The wrapped dataset's items in its order, with the label positions' states in place of ids and image."""

    def __init__(self, source: SupervisedSource, store):
        self.source, self.store = source, store

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        source, image = self.source, self.source.image_keys[index]
        states = self.store.get(source.entry_keys[index])
        if len(states) != source.rows(index):
            raise ValueError(f"{source.entry_keys[index]} has {len(states)} rows, not {source.rows(index)}")
        return {
            "states": states,
            "targets": torch.from_numpy(source.targets[index]).long(),
            "vision": self.store.get(image) if image else None,
        }


class CachedSupervisedCollator:
    """What `objective.supervised_loss.cached_label_states` reads, padded as `backbone_label_states` pads."""

    def __call__(self, items: list[dict]) -> dict:
        states = padded_label_states([item["states"] for item in items], [item["targets"] for item in items])
        return {
            STATES_KEY: states.hidden,
            "label_targets": states.targets,
            **packed_vision([i["vision"] for i in items]),
        }
