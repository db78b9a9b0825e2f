"""The dtypes a command may ask for by name, and the one used when none is named."""

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def default_dtype(device) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere: what LLaVA's builder loads in."""
    return torch.float16 if str(device).startswith("cuda") else torch.float32
