"""What the POPE and CHAIR commands share around their runs: rank synchronisation, and a hint for a
`--coco_path` given one folder too high (HA-DPO's layout)."""

import os

import torch


def coco_path_hint(coco_path: str) -> str:
    inner = os.path.join(coco_path, "val2014")
    return f" (--coco_path is the images' own folder: {inner}?)" if os.path.isdir(inner) else ""


def barrier(world_size: int):
    if world_size > 1:
        torch.distributed.barrier()


def gather(items: list, world_size: int) -> list:
    """Every rank's `items`, concatenated in rank order (one process: `items` itself)."""
    if world_size == 1:
        return items
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
