"""`python -m post_decoder.families.minigpt4 ...`: convert a MiniGPT-4 release (see original.py)."""

from .original import main

main()
