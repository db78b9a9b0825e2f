"""Merge trained stage weights into a LLaVA-1.5 checkpoint (the original work's replace_bin.py,
checked before anything is written and never corrupting its input).

    # stage 1 (the block trained alone): add the block, keep lm_head, into a new folder
    post-decoder-replace-bin --tune_stage 1 --path_model_state_dict llava-v1.5-7b-hf \\
        --path_non_lora_state_dict runs/stage1/checkpoint-500 --output runs/stage1/merged
    # stage 2 (block and lm_head trained from runs/stage1/merged): replace both, in place
    # (the files it replaces are kept as *.bak)
    post-decoder-replace-bin --tune_stage 2 --path_model_state_dict runs/stage1/merged \\
        --path_non_lora_state_dict runs/stage2/checkpoint-500
    # --merge: load the base (any format; original LLaVA-1.5 is converted) and save a complete folder
    post-decoder-replace-bin --merge --tune_stage 1 --path_model_state_dict llava-v1.5-7b \\
        --path_non_lora_state_dict runs/stage1/checkpoint-500 --output runs/stage1/merged

Stages: 0 adds the block and replaces lm_head; 1 adds the block and keeps lm_head; 2 replaces the
block and lm_head. Other trained tensors the checkpoint holds (the projector) are replaced in every stage.
A new --output folder holds the model's files only (weights, config, tokenizer, processor): results of
runs on the base (pope_metrics.json, training_summary.json, ...) describe the base and stay with it.
See post_decoder/stage_weights.py for the rules. `python scripts/replace_bin.py` (the original work's
path) runs the same command.
"""

import argparse

from post_decoder.dtypes import DTYPES
from post_decoder.errors import run_command
from post_decoder.stage_weights import STAGES, merge, replace_bin


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument(
        "--tune_stage",
        type=int,
        required=True,
        choices=sorted(STAGES),
        help="0: add block, replace head; 1: add block, keep head; 2: replace block and head",
    )
    parser.add_argument(
        "--path_model_state_dict",
        required=True,
        help="the checkpoint: its folder, its index file, or one of its weight files (.bin or .safetensors); "
        "new tensors go to a named weight file, else to the file holding lm_head",
    )
    parser.add_argument(
        "--path_non_lora_state_dict",
        required=True,
        help="the trained weights: a trainer checkpoint folder, "
        "trainable_weights.safetensors or non_lora_trainables.bin",
    )
    parser.add_argument(
        "--post_decoder_config",
        default=None,
        help="the block's config (default: post_decoder_config.json beside the trained weights)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="a new folder to write to (required with --merge); default: rewrite in place, keeping *.bak",
    )
    parser.add_argument(
        "--overwrite_backup", action="store_true", help="in place: replace *.bak files left by an earlier run"
    )
    parser.add_argument(
        "--cast_dtype",
        action="store_true",
        help="store trained tensors in the checkpoint's dtype (rounds them); default: a dtype difference is an error",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="write a complete model folder (any base format) instead of rewriting the base's files",
    )
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="--merge: the folder's dtype (default: the base's)"
    )
    parser.add_argument("--dry_run", action="store_true", help="check and report, write nothing")
    args = parser.parse_args(argv)
    if args.merge and args.output is None:
        parser.error("--merge writes a new folder: pass --output")
    if args.merge and args.overwrite_backup:
        parser.error("--overwrite_backup is for rewriting in place; --merge writes a new folder")
    if args.dtype and not args.merge:
        parser.error("--dtype is for --merge; without it the checkpoint keeps its dtypes (see --cast_dtype)")
    return args


def main(argv=None, program: str | None = None):
    """The console command `post-decoder-replace-bin` (and scripts/replace_bin.py). Bad input (missing
    files, keys that do not fit) ends with `PROGRAM: error: ...` and exit code 2; PROGRAM is the command's
    name unless `program` gives one."""
    return run_command(_main, argv, program)


def _main(argv):
    report = _run(parse_args(argv))
    print(report)
    return report


def _run(args):
    if args.merge:
        return merge(
            args.tune_stage,
            args.path_model_state_dict,
            args.path_non_lora_state_dict,
            args.output,
            dtype=DTYPES[args.dtype] if args.dtype else None,
            cast_dtype=args.cast_dtype,
            post_decoder_config=args.post_decoder_config,
            dry_run=args.dry_run,
        )
    return replace_bin(
        args.tune_stage,
        args.path_model_state_dict,
        args.path_non_lora_state_dict,
        output=args.output,
        post_decoder_config=args.post_decoder_config,
        cast_dtype=args.cast_dtype,
        overwrite_backup=args.overwrite_backup,
        dry_run=args.dry_run,
    )


if __name__ == "__main__":
    main()
