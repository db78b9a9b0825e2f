"""Supervised fine-tuning of the post-interaction block (and/or lm_head) on LLaVA-format instruction data,
the backbone frozen: the original work's second training path (any family: LLaVA-1.5, Qwen-VL, ...; the samples
in the model's own template).

    deepspeed ha_dpo/train_llava_post.py --deepspeed scripts/zero2.json \\
        --model_name_or_path liuhaotian/llava-v1.5-7b --data_path data/llava_v1_5_mix665k.json \\
        --image_folder data --tune_post_decoder True --bf16 True --output_dir runs/sft \\
        --per_device_train_batch_size 16 --learning_rate 2e-5 --num_train_epochs 1

Also installed as `post-decoder-train-sft`; `--config FILE` reads a JSON recipe of flags (flags given
beside it override it); from Python, `train_sft(model_args, data_args, training_args)` is the same run.
`--backbone_cache DIR` stores the frozen backbone's states at the label positions once (ha_dpo/cache).
The samples are in the model family's template (`--conv_mode`'s default); labels cover the assistant turns
(LLaVA-1.5: each answer and its `</s>`; Qwen-VL: each answer, `<|im_end|>` and the line break, as Qwen's own
fine-tuning code). `--keep_text_only False` drops the samples without an image (kept by default: the block passes
them through); either way they are counted. `--help` lists every flag. Bad input stops with one
line and exit code 2; `--debug` shows the traceback instead.
"""

from transformers import set_seed

from ha_dpo.cache.identity import SUPERVISED
from ha_dpo.cache.run import use_backbone_cache
from ha_dpo.cli.arguments import ModelArguments, PostDecoderTrainingArguments, SupervisedDataArguments
from ha_dpo.cli.training_run import parse, prepare_run, train_and_save
from ha_dpo.data.collators import SupervisedCollator
from ha_dpo.data.image_tokens import ImageTokens
from ha_dpo.data.llava_data import SupervisedDataset, read_llava_samples
from ha_dpo.data.skips import SkipCounter
from ha_dpo.trainer.trainer import SupervisedModel, TrainableOnlyTrainer
from ha_dpo.trainer.training_model import conv_mode_for, load_for_training, train_block_and_head_only
from post_decoder.errors import InputError, run_command
from post_decoder.family import family_for

ARGUMENT_TYPES = (ModelArguments, SupervisedDataArguments, PostDecoderTrainingArguments)


def train_sft(
    model_args: ModelArguments, data_args: SupervisedDataArguments, training_args: PostDecoderTrainingArguments
) -> TrainableOnlyTrainer:
    """The run: checks (before the model is loaded), model, samples, training, the result saved whole.
    Returns the trainer."""
    if model_args.lora_enable:
        raise InputError("--lora_enable: this script trains the block and/or lm_head; LoRA SFT is LLaVA's own script")
    notes = prepare_run(model_args, training_args)
    set_seed(training_args.seed)
    tokenizer, model, image_processor = load_for_training(model_args, training_args)
    skips = SkipCounter("LLaVA instruction samples", strict=data_args.strict)
    samples = read_llava_samples(
        data_args.data_path, data_args.image_folder, keep_text_only=data_args.keep_text_only, skips=skips
    )
    config, family = model.config, family_for(model)
    conv_mode = conv_mode_for(model, data_args.conv_mode)
    dataset = SupervisedDataset(
        samples,
        tokenizer,
        family.image_token_id(config),
        ImageTokens.for_model(family, config, image_processor),
        training_args.model_max_length,
        skips=skips,
        conv_mode=conv_mode,
    )
    train_block_and_head_only(model_args, model)
    trainer = TrainableOnlyTrainer(
        model=SupervisedModel(model),
        args=training_args,
        train_dataset=dataset,
        data_collator=SupervisedCollator(tokenizer, image_processor, config),
        processing_class=tokenizer,
    )
    if training_args.backbone_cache:
        use_backbone_cache(trainer, SUPERVISED, tokenizer, image_processor, conv_mode)
    return train_and_save(trainer, training_args, [*notes, skips.summary()], skips)


def main(argv=None):
    return train_sft(*parse(ARGUMENT_TYPES, argv))


def command():
    """The console command `post-decoder-train-sft`."""
    run_command(main)


if __name__ == "__main__":
    command()
