"""What both training scripts do around the Trainer: parse the flags (and a `--config` recipe), check
the run before the model is loaded, train, save the result whole, report."""

import os
import sys
import tempfile

from transformers import HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from post_decoder.errors import InputError

from .arguments import check_arguments, rename_old_flags
from .config_files import CONFIG_FLAG, CONFIG_HELP, config_flags
from .cpu_deepspeed import cpu_deepspeed_arguments
from .reporting import configure_wandb

WRITE_PROBE = ".write-test-"  # the start-up check's own file; hidden, so no rank mistakes it for a run's


def parse(dataclass_types, argv=None) -> tuple:
    """The argument dataclasses from the command line: `--config FILE`'s settings first, then the flags,
    which override them. Each dataclass checks itself as it is built (a refused flag raises `InputError`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = rename_old_flags(config_flags(argv, dataclass_types))
    argv += cpu_deepspeed_arguments(argv)
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument(CONFIG_FLAG, metavar="FILE", help=CONFIG_HELP)  # for --help: config_flags took it out
    return tuple(parser.parse_args_into_dataclasses(args=argv)[: len(dataclass_types)])


def prepare_run(model_args, training_args) -> list[str]:
    """Everything that can stop a run before the model is loaded and hours are spent: what needs two
    argument dataclasses together (`check_arguments`) and an output folder this run cannot use raise
    `InputError`; also sets wandb up. Returns the notes to print."""
    notes = check_arguments(model_args, training_args)
    check_output_dir(training_args)
    notes.append(configure_wandb(training_args.report_to))
    return [note for note in notes if note]


def check_output_dir(training_args) -> None:
    """`--output_dir` must be a folder this process can write, and hold no other run's files unless the
    run resumes (`--resume_from_checkpoint`) or replaces them (`--overwrite_output_dir True`)."""
    output_dir = training_args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"--output_dir {output_dir} is a file: name a new or empty folder for the run")
    resuming = resume_checkpoint(training_args) is not None
    contents = (
        sorted(name for name in os.listdir(output_dir) if not name.startswith("."))
        if os.path.isdir(output_dir)
        else []
    )
    if contents and not (resuming or training_args.overwrite_output_dir):
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise InputError(
            f"--output_dir {output_dir} is not empty ({shown}): pass --resume_from_checkpoint latest to continue "
            "that run, --overwrite_output_dir True to replace its results, or name a new folder"
        )
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=WRITE_PROBE, dir=output_dir):
            pass
    except OSError as error:
        raise InputError(
            f"--output_dir {output_dir} cannot be written ({error.strerror or error}): name a folder you can write to"
        ) from error


def resume_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint PATH`, or `True`/`latest` for the newest checkpoint in output_dir."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "False", "false"):
        return None
    if resume in ("True", "true", "latest"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise InputError(
                f"--resume_from_checkpoint {resume}: no checkpoint-N folder in {training_args.output_dir}; "
                "drop the flag to start a new run"
            )
        return last
    if not os.path.isdir(resume):
        raise InputError(f"--resume_from_checkpoint {resume}: no such folder; name a checkpoint-N folder of the run")
    return resume


def train_and_save(trainer, training_args, notes: list[str], skips):
    """Train (resuming if asked), save the result whole (trained tensors, tokenizer, trainer_state.json,
    training curves), report the skips."""
    if trainer.is_world_process_zero():
        for note in notes:
            print(note, flush=True)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    result_notes = trainer.save_result(plot=training_args.plot)
    if trainer.is_world_process_zero():
        for note in [*result_notes, skips.summary()]:
            print(note, flush=True)
    return trainer
