"""Content keys of cache entries: a digest of everything that decides an entry's tensor, besides what
the cache's identity already fixes (the backbone, its dtype, the image processing).

An image is named by the SHA-256 of its file's bytes (the same after a copy or a move); a pair or a
sample by its image's digest and its token ids. A run whose data, seed (HA-DPO's draws), or
`model_max_length` differ from the runs before finds the entries it shares and adds the others.
"""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

NO_IMAGE = "no-image"
FILE_BLOCK = 1 << 20


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(FILE_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(paths, workers: int = 8) -> dict[str, str]:
    """path -> digest of each distinct path (in threads: hashlib releases the GIL)."""
    distinct = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(distinct, pool.map(file_digest, distinct)))


def entry_key(kind: str, image_digest: str | None, *arrays) -> str:
    """`kind/<digest>` of an image digest (None: no image) and integer arrays (each with its length)."""
    digest = hashlib.sha256((image_digest or NO_IMAGE).encode())
    for array in arrays:
        array = np.ascontiguousarray(array, dtype=np.int64)
        digest.update(len(array).to_bytes(8, "little"))
        digest.update(array.tobytes())
    return f"{kind}/{digest.hexdigest()[:40]}"


def image_key(image_digest: str, *prompt_arrays) -> str:
    """`image/<digest>` of an image file; with the ids a family reads from the image's question (InstructBLIP's
    Q-Former tokens: its query outputs, the block's `projector` features, depend on them), of the two."""
    if prompt_arrays:
        return "image/" + entry_key("prompted", image_digest, *prompt_arrays).split("/", 1)[1]
    return f"image/{image_digest[:40]}"
