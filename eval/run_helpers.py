"""What the POPE and CHAIR commands share around their runs: starting the ranks, refusing to write over an
answers file, rank synchronisation, and a hint for a `--coco_path` given one folder too high (HA-DPO's layout)."""

import os

import torch

from eval.answer_files import existing_paths
from post_decoder.errors import InputError


def start_ranks() -> tuple[int, int, str]:
    """(world size, rank, device) of this process under torchrun (one process: 1, 0); joins the process group."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    if world_size > 1:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world_size, rank, device


def refuse_unasked_resume(answers_file: str, resume: bool) -> bool:
    """Whether this run continues `answers_file`; an InputError if it exists and --resume was not given."""
    resuming = bool(existing_paths(answers_file))
    if resuming and not resume:
        raise InputError(f"{answers_file} (or its parts) exists: pass --resume to continue it, or remove it")
    return resuming


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
