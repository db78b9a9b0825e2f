"""DPO of the post-interaction block (and/or lm_head, or HA-DPO's LoRA baseline) on HA-DPO pairs.

    deepspeed ha_dpo/train_dpo_post.py --deepspeed scripts/zero2.json \\
        --model_name_or_path liuhaotian/llava-v1.5-7b --vg_path data/VG \\
        --desc_data_path data/hadpo/llava-v1.5/desc_data.json --pope_data_path data/hadpo/llava-v1.5/pope_data.json \\
        --tune_post_decoder True --bf16 True --output_dir runs/stage1 --per_device_train_batch_size 4 \\
        --learning_rate 2e-4 --beta 0.1 --num_train_epochs 1

Any family's checkpoint: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder (`Qwen/Qwen2.5-VL-7B-Instruct`) takes the same
flags; its samples are in its own chat template (`--conv_mode` defaults to the model family's), each image takes
its own number of tokens, and `--min_pixels` / `--max_pixels` bound its image processor.
`--backbone_cache DIR` computes the frozen backbone's outputs once and reads them in every later epoch and
run (ha_dpo/cache). Also runs under `python` and `torchrun`, and installed as `post-decoder-train-dpo`.
`--help` lists every flag; `--config FILE` reads a JSON recipe of them (flags given beside it override it).
Bad input (a flag, a file, an output folder) stops with one line and exit code 2; `--debug` shows the
traceback instead.

From Python, `train_dpo(model_args, data_args, training_args)` is the same run (`arguments_from` builds
the arguments from a recipe's settings).
"""

from transformers import set_seed

from ha_dpo.cache.identity import PREFERENCE
from ha_dpo.cache.run import use_backbone_cache
from ha_dpo.cli.arguments import ModelArguments, PreferenceDataArguments, PreferenceTrainingArguments
from ha_dpo.cli.training_run import parse, prepare_run, train_and_save
from ha_dpo.data.collators import PreferenceCollator
from ha_dpo.data.hadpo_data import read_hadpo_pairs
from ha_dpo.data.image_tokens import ImageTokens
from ha_dpo.data.preference_data import PreferenceDataset
from ha_dpo.data.skips import SkipCounter
from ha_dpo.trainer.trainer import PreferenceTrainer
from ha_dpo.trainer.training_model import conv_mode_for, load_for_training, preference_model
from post_decoder.errors import run_command
from post_decoder.family import family_for


def preference_data(data_args, training_args, tokenizer, image_processor, model_config, conv_mode=None):
    """HA-DPO's pairs (its mix, or every pair), tokenized in `conv_mode`'s template (None: `--conv_mode`) and
    checked, each image's token count the model family's for it; bad samples counted in `skips`."""
    skips = SkipCounter("HA-DPO pairs", strict=data_args.strict)
    samples = read_hadpo_pairs(
        data_args.vg_path,
        data_args.desc_data_path,
        data_args.pope_data_path,
        sample_strategy="all" if data_args.all_pairs else "offline",
        seed=training_args.seed,
        skips=skips,
        pope_correct_pairs=data_args.pope_correct_pairs,
    )
    family = family_for(model_config)
    dataset = PreferenceDataset(
        samples,
        tokenizer,
        family.image_token_id(model_config),
        ImageTokens.for_model(family, model_config, image_processor),
        training_args.model_max_length,
        skips=skips,
        conv_mode=conv_mode or data_args.conv_mode,
    )
    return dataset, PreferenceCollator(tokenizer, image_processor, model_config), skips


ARGUMENT_TYPES = (ModelArguments, PreferenceDataArguments, PreferenceTrainingArguments)


def train_dpo(
    model_args: ModelArguments, data_args: PreferenceDataArguments, training_args: PreferenceTrainingArguments
) -> PreferenceTrainer:
    """The run: checks (before the model is loaded), model, pairs, training, the result saved whole.
    Returns the trainer (its `state` holds the logged history)."""
    notes = prepare_run(model_args, training_args)
    set_seed(training_args.seed)  # before the block is created: its initialisation is part of the run
    tokenizer, model, image_processor = load_for_training(model_args, training_args)
    conv_mode = conv_mode_for(model, data_args.conv_mode)
    dataset, collator, skips = preference_data(
        data_args, training_args, tokenizer, image_processor, model.config, conv_mode
    )
    trainer = PreferenceTrainer(
        model=preference_model(model_args, model, tokenizer),
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        beta=training_args.beta,
        loss_type=training_args.loss_type,
        gamma=training_args.gamma,
    )
    if training_args.backbone_cache:
        use_backbone_cache(trainer, PREFERENCE, tokenizer, image_processor, conv_mode)
    return train_and_save(trainer, training_args, [*notes, skips.summary()], skips)


def main(argv=None):
    return train_dpo(*parse(ARGUMENT_TYPES, argv))


def command():
    """The console command `post-decoder-train-dpo`."""
    run_command(main)


if __name__ == "__main__":
    command()
