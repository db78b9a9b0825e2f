"""The command line: the training commands (and `train_dpo`/`train_sft`, the same runs from Python), their
arguments, recipe files, what runs around the Trainer, reports, and the stage-weight merge (replace_bin)."""
