"""What produced an answers file, kept beside it in `{answers}.settings.json`, so that `--resume`
never mixes the answers of two models, two prompts or two decodings in one score.

The weights are told apart by a fingerprint of their content, not of their files: SHA-256 over
every tensor's name, shape and dtype and 1,024 evenly spaced values of it. It reads a few KB per
tensor (well under a second on a 7B model on a GPU), is the same for both checkpoint formats and
after a copy or a move, and differs between two trainings, which change almost every value.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields

import torch

from post_decoder.atomic_files import atomic_file
from post_decoder.errors import InputError

SAMPLES_PER_TENSOR = 1024
SHOWN_ONLY = ("model_path", "model_base")


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        if flat.numel() > SAMPLES_PER_TENSOR:  # integer positions: the same on every device
            positions = (
                torch.arange(SAMPLES_PER_TENSOR, device=flat.device) * (flat.numel() - 1) // (SAMPLES_PER_TENSOR - 1)
            )
            flat = flat[positions]
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(flat.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class AnswerSettings:
    """Everything that decides an answer. The paths are kept to be shown, not compared: the same
    weights moved to another folder give the same answers."""

    weights: str
    dtype: str
    conv_mode: str
    prompt_suffix: str
    max_new_tokens: int
    decoding: str = "greedy"
    min_pixels: int | None = None  # a dynamic-resolution family's image size bounds (None: its processor's own)
    max_pixels: int | None = None
    model_path: str = ""
    model_base: str | None = None

    def differences(self, recorded: dict) -> list[str]:
        """What differs from the `recorded` settings, said for a person ("conv_mode 'llava_v1' there, ...")."""
        found = [
            f"{field.name} {recorded.get(field.name)!r} there, {getattr(self, field.name)!r} now"
            for field in fields(self)
            if field.name not in SHOWN_ONLY and recorded.get(field.name) != getattr(self, field.name)
        ]
        if recorded.get("weights") != self.weights:
            found.append(f"model {recorded.get('model_path')!r} there, {self.model_path!r} now")
        return found


def settings_path(answers_file: str) -> str:
    return answers_file + ".settings.json"


def write_settings(answers_file: str, settings: AnswerSettings):
    with atomic_file(settings_path(answers_file)) as temporary:
        with open(temporary, "w") as handle:
            json.dump(asdict(settings), handle, indent=2)


def read_settings(answers_file: str) -> dict | None:
    path = settings_path(answers_file)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            recorded = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"{path}: not the JSON this tool writes ({error}); remove it with the answers to start over"
        ) from None
    if not isinstance(recorded, dict):
        raise InputError(f"{path}: expected a JSON object; remove it with the answers to start over")
    return recorded


def check_same_settings(answers_file: str, settings: AnswerSettings):
    """Refuse to continue answers that other settings (or an unknown run) wrote."""
    recorded = read_settings(answers_file)
    if recorded is None:
        raise InputError(
            f"{answers_file}: there is no record of what wrote these answers ({settings_path(answers_file)} is "
            "missing), so --resume cannot tell if they are this model's: remove them or use another --answers-file"
        )
    differences = settings.differences(recorded)
    if differences:
        raise InputError(
            f"{answers_file} holds answers written with other settings ({'; '.join(differences)}): "
            "use another --answers-file, or remove it to start over"
        )
