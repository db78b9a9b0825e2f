"""`python scripts/replace_bin.py ...` (the original work's path): merge trained stage weights into a
LLaVA-1.5 checkpoint. A thin entry to `ha_dpo.cli.replace_bin`, where the command and its flags are
documented; installed, the same command is `post-decoder-replace-bin`."""

import os
import sys

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ha_dpo.cli.replace_bin import main as replace_bin_main  # noqa: E402


def main(argv=None):
    """Errors read `replace_bin.py: error: ...`, as the original script's."""
    return replace_bin_main(argv, program="replace_bin.py")


if __name__ == "__main__":
    main()
