"""The command line: the training scripts, their arguments, what runs around the Trainer, reports."""
