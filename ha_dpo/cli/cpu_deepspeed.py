"""DeepSpeed on a machine without GPUs (tests, CPU-only laptops).

Under the `deepspeed` launcher, transformers asks accelerate for a DeepSpeed state without a
communication backend; with no GPU, accelerate then falls back to a single process, and every rank
trains alone. Setting accelerate's state up first with the `gloo` backend keeps the ranks together.
"""

import os

import torch

USE_CONFIGURED_STATE = ["--accelerator_config", '{"use_configured_state": true}']


def cpu_deepspeed_arguments(argv: list[str]) -> list[str]:
    """When launched by DeepSpeed with a config and no GPU: set up the gloo state and return the
    extra flags that make the Trainer use it. Otherwise nothing happens and no flag is added."""
    launched = os.environ.get("LOCAL_RANK") is not None
    uses_deepspeed = any(arg.split("=")[0] == "--deepspeed" for arg in argv)
    if not (launched and uses_deepspeed) or torch.cuda.is_available():
        return []
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return USE_CONFIGURED_STATE
