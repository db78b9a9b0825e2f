"""Training of the post-decoder block: DPO on HA-DPO pairs, SFT on LLaVA data, the toy world."""
