"""Checkpoints of the trained tensors only: fast to write, and never a gather of the whole model.

A checkpoint folder holds:
  trainable_weights.safetensors   every trained tensor, named as in the model's state_dict
  non_lora_trainables.bin         the trained tensors outside LoRA adapters (LLaVA / HA-DPO's file,
                                  read by scripts/replace_bin.py)
  post_decoder_config.json + post_decoder.safetensors
                                  the block alone, when it is trained: opens with
                                  load_pretrained_model(folder, model_base=BASE)
  adapter_config.json + adapter_model.safetensors
                                  the LoRA adapters (PEFT's format), for the LoRA baseline
Each file is written to a temporary name and renamed, so a crash never leaves a torn file.

The run's final result (the same files, plus trainer_state.json and training_curves.png) is written
whole to a staging folder and then published into the run folder with `publish_result`.
"""

import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

from post_decoder.atomic_files import atomic_file
from post_decoder.block.files import POST_DECODER_CONFIG, POST_DECODER_WEIGHTS, block_state, write_block_files
from post_decoder.saving import check_state_fits, without_peft_prefix

from ..cli.reporting import CURVES_FILE

TRAINABLE_WEIGHTS = "trainable_weights.safetensors"
NON_LORA_TRAINABLES = "non_lora_trainables.bin"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME
# What a run's result may hold besides the tokenizer: a new result removes the previous one's leftovers
# (a stage-1 block beside a head-only run's weights would be read as this run's).
RESULT_FILES = (
    TRAINABLE_WEIGHTS,
    NON_LORA_TRAINABLES,
    POST_DECODER_CONFIG,
    POST_DECODER_WEIGHTS,
    *ADAPTER_FILES,
    TRAINER_STATE,
    CURVES_FILE,
)


def gather_trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors on the CPU. Under ZeRO-3 only these are gathered (collective: call it on every rank)."""
    named = [(name, parameter) for name, parameter in policy.named_parameters() if parameter.requires_grad]
    if any(hasattr(parameter, "ds_id") for _, parameter in named):
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter for _, parameter in named]):
            return {name: parameter.detach().cpu().clone() for name, parameter in named}
    return {name: parameter.detach().cpu().clone() for name, parameter in named}


def write_trainable_checkpoint(directory: str, state: dict[str, torch.Tensor], policy: torch.nn.Module):
    """Write the files above for `state` (names as in `policy.state_dict()`)."""
    os.makedirs(directory, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in state.items()}
    _atomic(directory, TRAINABLE_WEIGHTS, lambda path: save_file(state, path, metadata={"format": "pt"}))
    non_lora = {without_peft_prefix(name): tensor for name, tensor in state.items() if "lora_" not in name}
    _atomic(directory, NON_LORA_TRAINABLES, lambda path: torch.save(non_lora, path))

    block = block_state(non_lora)
    if block:  # a trained block: also saved alone (an untrained one is the base's, unchanged)
        model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
        write_block_files(model.post_decoder.config, block, directory)
    if hasattr(policy, "peft_config"):
        # PEFT picks the adapter tensors out of the state it is given (no second gather). It names its own
        # files, so it writes them into a scratch folder, from which each one takes its place atomically.
        with tempfile.TemporaryDirectory(prefix=".adapter.tmp-", dir=directory) as scratch:
            policy.save_pretrained(scratch, state_dict=state)
            for name in os.listdir(scratch):
                _atomic(directory, name, lambda path, name=name: os.replace(os.path.join(scratch, name), path))


def load_trainable_checkpoint(policy: torch.nn.Module, directory: str):
    """Load `trainable_weights.safetensors` into `policy`: exactly its trainable tensors, no more, no less."""
    path = os.path.join(directory, TRAINABLE_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a checkpoint of this trainer: {TRAINABLE_WEIGHTS} is missing")
    state = load_file(path)
    trainable = {name: parameter for name, parameter in policy.named_parameters() if parameter.requires_grad}
    check_state_fits(state, trainable, f"trained weights {path} do not fit this run's trainable parameters")
    with torch.no_grad():
        for name, tensor in state.items():
            trainable[name].copy_(tensor)


def publish_result(staging: str, directory: str):
    """Move the complete result in `staging` into `directory`, then remove the previous result's files
    that the new one lacks. Only renames and removals: nothing is written here, so the window in which
    a crash could split the two results is the time of a few renames, not of writing gigabytes. (Not
    `atomic_directory`: the run folder also holds the checkpoints, which the result must not replace.)"""
    names = sorted(os.listdir(staging))
    for name in names:
        target = os.path.join(directory, name)
        if os.path.isdir(target) and not os.path.islink(target):
            raise IsADirectoryError(f"{target} is a folder; the result's file {name} cannot replace it")
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(directory, name))
    for name in RESULT_FILES:
        if name not in names and os.path.isfile(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    os.rmdir(staging)


def _atomic(directory: str, name: str, write):
    with atomic_file(os.path.join(directory, name)) as temporary:  # permissions follow the umask, as any file
        write(temporary)
