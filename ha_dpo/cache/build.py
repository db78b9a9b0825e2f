"""Running the frozen backbone over the pairs (or samples) a cache still lacks.

The build goes through this rank's batches of the run's first epoch, in the trainer's own order
(`TrainableOnlyTrainer.first_epoch_batches`), and runs them as training without a cache would (the same
collator, device, autocast and backbone code). So the run that starts a cache trains its first epoch on
states computed in the batches it trains on: bit for bit what it would compute itself. A later run runs
only the pairs it adds (`batches_to_run`). Under torchrun or DeepSpeed each rank builds its own batches,
writes its own shards, and no rank reads the others' until all have passed the barrier at the end.
"""

import contextlib
import random
import time

import numpy as np
import torch
from tqdm.auto import tqdm


@contextlib.contextmanager
def random_state_kept():
    """The build draws nothing the run would (the backbone has no dropout), but a data loader draws its seed:
    around the build every generator is put back, so the run's random numbers are those it would have had."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def batches_to_run(batches: list[list[int]], source, store) -> list[list[int]]:
    """A batch at least half of whose pairs are missing runs as it is: a first build (or its resumption) gives
    each pair the states of the batch it trains in, and never runs more than twice the pairs it needs. The
    missing pairs of the other batches (a later run's own: another seed's draws, added data) run together, in
    batches of the same size, so a run that shares most of its pairs computes little."""
    whole, pooled = [], {}
    for indices in batches:
        missing = [index for index in indices if any(key not in store for key in source.keys_of(index))]
        if 2 * len(missing) >= len(indices) > 0:
            whole.append(indices)
        else:
            for index in missing:
                pooled.setdefault(source.entry_keys[index], index)  # a pair repeated in the data runs once
    size = max(map(len, batches), default=1)
    in_whole = {source.entry_keys[index] for indices in whole for index in indices}
    rest = [index for key, index in pooled.items() if key not in in_whole]
    return whole + [rest[start : start + size] for start in range(0, len(rest), size)]


def build(model, source, store, batches, writer, prepare, autocast, show_progress: bool = False) -> int:
    """Compute the entries of `batches` (index lists) that `store` lacks and give them to `writer` (a
    `ShardWriter`). `prepare` moves a collated batch as training would (the Trainer's `_prepare_inputs`),
    `autocast` is training's autocast context. Returns how many batches ran the backbone."""
    todo = batches_to_run(batches, source, store)
    was_training = model.training
    model.eval()  # deterministic states (LLaVA's backbone has no dropout: the same as in training)
    try:
        with torch.no_grad():
            for indices in tqdm(todo, desc="backbone cache", unit="batch", disable=not show_progress):
                batch = prepare(source.batch(indices))
                with autocast():
                    for key, tensor in source.entries(model, indices, batch):
                        if key not in store and key not in writer:
                            writer.add(key, tensor)
                writer.flush_if_full()
        writer.flush()
    finally:
        model.train(was_training)
    return len(todo)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start
