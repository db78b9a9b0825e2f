"""One sub-package per backbone family; importing this registers them all (see post_decoder/family.py)."""

from . import llava  # noqa: F401  (registers LLaVA-1.5)
