"""What both training scripts do around the Trainer: parse the flags, train, save, plot, report."""

import os
import sys

from transformers import HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from .arguments import check_arguments, rename_old_flags
from .cpu_deepspeed import cpu_deepspeed_arguments
from .reporting import configure_wandb, plot_training_curves


def parse(dataclass_types, argv=None):
    """(model_args, data_args, training_args, notes); refused flags exit with the reasons."""
    argv = rename_old_flags(sys.argv[1:] if argv is None else list(argv))
    argv += cpu_deepspeed_arguments(argv)
    model_args, data_args, training_args = HfArgumentParser(dataclass_types).parse_args_into_dataclasses(args=argv)
    notes = check_arguments(model_args, training_args, data_args.image_aspect_ratio)
    notes.append(configure_wandb(training_args.report_to))
    return model_args, data_args, training_args, [note for note in notes if note]


def resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint PATH`, or `True`/`latest` for the newest checkpoint in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "False", "false"):
        return None
    if resume in ("True", "true", "latest"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise SystemExit(f"--resume_from_checkpoint {resume}: no checkpoint in {training_args.output_dir}")
        return last
    return resume


def train_and_save(trainer, training_args, notes: list[str], skips):
    """Train (resuming if asked), save the trained tensors, plot the curves, report the skips."""
    if trainer.is_world_process_zero():
        for note in notes:
            print(note, flush=True)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        if training_args.plot:
            plot_training_curves(trainer.state.log_history, os.path.join(training_args.output_dir, "training_curves.png"))
        print(skips.summary(), flush=True)
    return trainer
