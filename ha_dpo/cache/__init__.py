"""The backbone cache: the frozen backbone's outputs, computed once and read by every later epoch and run.

In the block and head stages the backbone never changes, yet it is almost all of a training step's
cost. `--backbone_cache DIR` runs it once over the data and stores exactly what the heads read; later
epochs, runs (a sweep over learning rate, beta, variant, seed) and resumed runs read it instead.

  identity.py    what a cache was built from (backbone weights, config, dtype, image processing,
                 tokenizer, template); a run with anything else is refused, naming what differs
  keys.py        content keys: every entry is named by a digest of what decides it (the image
                 file's bytes, the token ids), so a run reads only states of its own pairs
  store.py       the files: shards of safetensors, read memory-mapped; disk estimates
  preference.py  DPO pairs: what is stored per pair and per image, the cached dataset and collator
  supervised.py  SFT samples: the hidden states at the label positions, the cached dataset and collator
  build.py       running the backbone over the pairs or samples still missing, rank by rank
  run.py         the training scripts' entry: checks, build, the trainer switched to the cache
"""
