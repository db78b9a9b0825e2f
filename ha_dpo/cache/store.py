"""The cache's files: shards of safetensors, each written whole (a temporary name, then a rename), read
memory-mapped.

    DIR/cache.json                     what it was built from (identity.py)
    DIR/shard-<process>-<n>.safetensors  entries `kind/<content digest>` -> tensor (keys.py); the metadata
                                       records the dtype each kind came in, so a cache stored in another
                                       dtype (--cache_dtype) is read back in the dtype the heads got

A build adds shards and never rewrites one, so an interrupted build keeps every shard it finished, and
two processes never write the same file. A key found in two shards (two runs built it at once) is read
from the first.
"""

import glob
import math
import os
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from post_decoder.atomic_files import atomic_file
from post_decoder.dtypes import DTYPES

SHARD_GLOB = "shard-*.safetensors"
SHARD_BYTES = 256 * 2**20  # about this much per shard: what an interrupted build recomputes at most
DTYPE_PREFIX = "dtype:"


class StateStore:
    """The complete shards of a cache folder: `key in store`, `store.get(key, first_row=0)`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.refresh()

    def refresh(self):
        """Scan the folder again (after a build: other processes' shards)."""
        self._shard_of: dict[str, str] = {}
        self._dtypes: dict[str, dict[str, torch.dtype]] = {}
        self._handles = {}
        for path in sorted(glob.glob(os.path.join(self.directory, SHARD_GLOB))):
            handle = safe_open(path, framework="pt")
            metadata = handle.metadata() or {}
            self._dtypes[path] = {
                name.removeprefix(DTYPE_PREFIX): DTYPES[value]
                for name, value in metadata.items()
                if name.startswith(DTYPE_PREFIX)
            }
            for key in handle.keys():
                self._shard_of.setdefault(key, path)

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def get(self, key: str, first_row: int = 0) -> torch.Tensor:
        """The entry's rows from `first_row` on (only those are read), in the dtype it was computed in."""
        path = self._shard_of[key]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        handle = self._handles[path]
        tensor = handle.get_slice(key)[first_row:] if first_row else handle.get_tensor(key)
        dtype = self._dtypes[path].get(key.split("/", 1)[0])
        return tensor if dtype is None else tensor.to(dtype)

    def shard_bytes(self) -> int:
        return sum(os.path.getsize(path) for path in set(self._shard_of.values()))

    def sizes_by_kind(self) -> dict[str, tuple[int, int]]:
        """kind -> (entries, bytes of their tensors as stored), e.g. {"pair": (5926, 29_000_000), "image": ...}."""
        sizes: dict[str, tuple[int, int]] = {}
        for path in set(self._shard_of.values()):
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    if self._shard_of[key] != path:
                        continue
                    kind, entry = key.split("/", 1)[0], handle.get_slice(key)
                    stored = math.prod(entry.get_shape()) * _itemsize(entry.get_dtype())
                    count, total = sizes.get(kind, (0, 0))
                    sizes[kind] = (count + 1, total + stored)
        return sizes

    def __getstate__(self):  # data-loader workers open their own handles
        return {**self.__dict__, "_handles": {}}


def _itemsize(safetensors_dtype: str) -> int:
    return {"F32": 4, "F16": 2, "BF16": 2}[safetensors_dtype]


class ShardWriter:
    """Collects entries and writes them as shards of about `shard_bytes`; `flush` writes the rest."""

    def __init__(self, directory: str, process_index: int, cache_dtype: torch.dtype | None, shard_bytes=SHARD_BYTES):
        self.directory, self.cache_dtype, self.shard_bytes = directory, cache_dtype, shard_bytes
        self.prefix = f"shard-{time.time_ns():x}-r{process_index}"
        self.pending: dict[str, torch.Tensor] = {}
        self.computed_dtypes: dict[str, torch.dtype] = {}
        self.written, self.pending_bytes = 0, 0

    def __contains__(self, key: str) -> bool:
        return key in self.pending

    def add(self, key: str, tensor: torch.Tensor):
        kind = key.split("/", 1)[0]
        if self.computed_dtypes.setdefault(kind, tensor.dtype) != tensor.dtype:
            raise ValueError(f"{kind} entries came in {self.computed_dtypes[kind]} and {tensor.dtype}")
        # A copy on the CPU: a view would keep the whole batch's tensor alive.
        stored = tensor.detach().to("cpu", self.cache_dtype or tensor.dtype, copy=True).contiguous()
        self.pending[key] = stored
        self.pending_bytes += stored.numel() * stored.element_size()

    def flush_if_full(self):
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        metadata = {"format": "pt"}
        metadata.update(
            {DTYPE_PREFIX + kind: str(dtype).removeprefix("torch.") for kind, dtype in self.computed_dtypes.items()}
        )
        path = os.path.join(self.directory, f"{self.prefix}-{self.written:05d}.safetensors")
        with atomic_file(path) as temporary:
            save_file(self.pending, temporary, metadata=metadata)
        self.written += 1
        self.pending, self.pending_bytes = {}, 0
