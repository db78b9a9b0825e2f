"""Libraries' messages that every run on this project's usual paths prints, and that ask nothing of the
user, left out of a command's output.

Each is matched by its exact text where it comes from (the library's logger, or the warning's category),
so anything else those libraries say still shows:

- DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." (logged at its import, in every process):
  dropped when torch is a build without CUDA/ROCm (the user chose the CPU build: there is no GPU to
  find), else shown by the first process only (a CUDA build that finds no GPU may be a driver problem).
- torch's "'pin_memory' argument is set as true but no accelerator is found": only said when there is
  no accelerator, where pinning has nothing to do (transformers' Trainer pins by default).
- accelerate's "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config
  has N": transformers' Trainer sets the plugin to 1 on purpose (it accumulates itself) and fills
  DeepSpeed's config from `--gradient_accumulation_steps`, so N is the user's own value.
- torch's FutureWarning that `torch.distributed.all_gather_into_tensor` is deprecated: DeepSpeed's ZeRO
  calls it, not this project; nothing for a user to change.

`run_command` installs this for every command; `--debug` (or POST_DECODER_DEBUG=1) shows everything.
"""

import logging
import os
import re
import warnings

DEEPSPEED_CPU = re.compile(r"Setting accelerator to CPU\. If you have GPU or other accelerator, we were unable")
ACCUMULATION_MISMATCH = re.compile(
    r"Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has \d+\. "
    r"Using DeepSpeed's value\."
)
PIN_MEMORY = r"'pin_memory' argument is set as true but no accelerator is found"
ALL_GATHER = r"`torch\.distributed\.all_gather_into_tensor` is deprecated"


class DropMessages(logging.Filter):
    """Drops a logger's records whose message matches one of `patterns` (searched: accelerate's
    per-process logger puts "[RANK n] " in front)."""

    def __init__(self, *patterns: re.Pattern):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


class DropDeepSpeedCpuLine(DropMessages):
    """DeepSpeed's CPU line: dropped on a CPU build of torch, and in every process but the first."""

    def __init__(self):
        super().__init__(DEEPSPEED_CPU)

    def filter(self, record: logging.LogRecord) -> bool:
        # Decided when the line comes (deepspeed has imported torch by then), not when the filter is installed.
        return super().filter(record) or (torch_has_gpu_build() and first_process())


def torch_has_gpu_build() -> bool:
    import torch

    return torch.backends.cuda.is_built() or torch.version.hip is not None


def first_process() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0"


def _add_filter(logger_name: str, drop: DropMessages):
    logger = logging.getLogger(logger_name)  # the same object the library configures when it is imported
    if not any(isinstance(existing, DropMessages) for existing in logger.filters):
        logger.addFilter(drop)


def quiet_expected_messages():
    """Install the filters (once; calling again changes nothing). Call before the libraries are used:
    DeepSpeed's line is logged when deepspeed is first imported."""
    _add_filter("DeepSpeed", DropDeepSpeedCpuLine())
    _add_filter("accelerate.accelerator", DropMessages(ACCUMULATION_MISMATCH))
    warnings.filterwarnings("ignore", message=PIN_MEMORY, category=UserWarning)
    warnings.filterwarnings("ignore", message=ALL_GATHER, category=FutureWarning)
