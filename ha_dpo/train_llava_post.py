"""`deepspeed ha_dpo/train_llava_post.py ...` (SFT of the block on LLaVA data) as HA-DPO and LLaVA start training:
a thin entry that runs `ha_dpo.cli.train_llava_post`, where the command and its flags are documented.
Installed, the same command is `post-decoder-train-sft`."""

import os
import sys

if __package__ in (None, ""):  # run as a file: the project root replaces this folder on the path, so that
    # ha_dpo's sub-packages (cli, data, trainer, ...) cannot shadow top-level modules of the same names
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.path.dirname(HERE), *(path for path in sys.path if os.path.abspath(path) != HERE)]

from ha_dpo.cli.train_llava_post import command  # noqa: E402

if __name__ == "__main__":
    command()
