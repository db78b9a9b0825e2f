"""Data: HA-DPO pairs and LLaVA samples read, tokenized and checked; images; the collators; counted skips."""
