"""POPE evaluation of LLaVA-1.5 with or without a post-decoder block (in progress)."""
