"""Training commands run in-process on a tiny model folder, merging stage weights, and the weights a
training run must leave alone: what the families' training-command tests share."""

from ha_dpo.cli import replace_bin
from post_decoder.family import family_for


def common_flags(output_dir, steps=3, *extra):
    return ["--output_dir", str(output_dir), "--max_steps", str(steps), "--per_device_train_batch_size", "2",
            "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1", "--save_steps", "2",
            "--report_to", "none", "--seed", "0", "--model_max_length", "512", "--dataloader_num_workers", "0",
            "--disable_tqdm", "True", "--plot", "False", *extra]  # fmt: skip


def train_dpo(model, data, output_dir, *extra, steps=3):
    from ha_dpo.cli.train_dpo_post import main

    return main(["--model_name_or_path", model, *data, *extra, "--use_cpu", "True", *common_flags(output_dir, steps)])


def train_sft(world, output_dir, *extra, steps=3):
    """SFT of the block on `world.llava` (data file, image folder) from `world.folder`."""
    from ha_dpo.cli.train_llava_post import main

    data_path, image_folder = world.llava
    data = ["--data_path", data_path, "--image_folder", image_folder, "--tune_post_decoder", "True"]
    return main(
        ["--model_name_or_path", world.folder, *data, *extra, "--use_cpu", "True", *common_flags(output_dir, steps)]
    )


def merge(stage, model, trained, output, whole: bool = True):
    """`--merge` (the model loaded, then saved whole), or replace_bin's rewrite of the checkpoint's own files."""
    replace_bin.main([*(["--merge"] if whole else []), "--tune_stage", str(stage), "--path_model_state_dict", model,
                      "--path_non_lora_state_dict", trained, "--output", output])  # fmt: skip
    return output


def backbone_state(model) -> dict:
    """Every weight but the block's and the head's: what stage 1 and 2 must leave bit-identical."""
    head = family_for(model).head_key
    return {name: tensor for name, tensor in model.state_dict().items()
            if not name.startswith("post_decoder.") and name != head}  # fmt: skip
