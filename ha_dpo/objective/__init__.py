"""The objective: the DPO loss and the log-probabilities it compares (shared-backbone and full-sequence)."""
