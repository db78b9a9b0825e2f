"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL models for tests, saved in the hub's layout (never imported by the
product itself).

Nothing here downloads: the tokenizer is a byte-level BPE trained on the spot and wrapped in transformers'
`Qwen2Tokenizer` (Qwen's own pre-tokenizer), with Qwen's special tokens; its chat template renders the same
ChatML as the Instruct models' (post_decoder/families/qwen_vl/conversation.py). The image processor's patch
and merge sizes match the tiny vision encoders (4-pixel patches, 2x2 merges: one image token per 8x8 pixels).
"""

import json
import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

from .conversation import DEFAULT_SYSTEM

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_CORPUS = [
    DEFAULT_SYSTEM,
    "Is there a dog in the image? Yes, there is a dog in the image.",
    "Describe the image in detail. The image shows a red circle next to a blue square.",
    "Answer the question using a single word or phrase. No, there is no cat. There are two cups on a table.",
]
# A ChatML template: a message's content is a string or a list of {"type": "image"} / {"type": "text"} parts.
_CHAT_TURNS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_template(default_system: str | None) -> str:
    """Qwen2-VL and Qwen2.5-VL add a default system message when a conversation has none; Qwen3-VL adds none."""
    if default_system is None:
        return _CHAT_TURNS
    system = "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}"
    return "{% if messages[0]['role'] != 'system' %}" + system + "{% endif %}" + _CHAT_TURNS


PATCH_SIZE, MERGE_SIZE = 4, 2
MIN_PIXELS, MAX_PIXELS = 16 * 16, 48 * 48  # 4 to 36 image tokens


def train_tiny_qwen_tokenizer(
    directory: str | None = None, with_system: bool = True, vocab_size: int = 400, corpus: list[str] | None = None
):
    """A byte-level BPE with Qwen's pre-tokenizer and special tokens (EOS `<|im_end|>`, padding `<|endoftext|>`,
    as the Instruct models), trained on `corpus` (a few test sentences by default), saved to `directory` when
    given."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIAL_TOKENS),  # the first ids, never split into merges
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(_CORPUS if corpus is None else corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=1024,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = chat_template(DEFAULT_SYSTEM if with_system else None)
    if directory is not None:
        tokenizer.save_pretrained(directory)
    return tokenizer


def _padded(size: int, multiple: int = 64) -> int:
    return (size + multiple - 1) // multiple * multiple


def special_token_ids(tokenizer) -> dict:
    """The config's ids of Qwen-VL's image/video/vision markers, as `tokenizer` has them."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    )}  # fmt: skip
    return ids


def _text(tokenizer, hidden_size: int = 64, **extra) -> dict:
    return dict(
        vocab_size=_padded(len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        **extra,
    )


def _vision(**sizes) -> dict:
    """A tiny vision encoder: 4 heads, 4-pixel patches, 2x2 merges; `sizes` name its widths and depth."""
    return dict(num_heads=4, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE, temporal_patch_size=2, **sizes)


def tiny_qwen2_vl_config(tokenizer) -> Qwen2VLConfig:
    vision = _vision(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2)  # Qwen2-VL: hidden_size is the merger's
    return Qwen2VLConfig(text_config=_text(tokenizer), vision_config=vision, **special_token_ids(tokenizer))


def tiny_qwen2_5_vl_config(tokenizer) -> Qwen2_5_VLConfig:
    vision = _vision(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=64,
        window_size=16,  # 2x2 merged tokens a window: images larger than that are reordered
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(text_config=_text(tokenizer), vision_config=vision, **special_token_ids(tokenizer))


def tiny_qwen3_vl_config(tokenizer) -> Qwen3VLConfig:
    vision = _vision(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        out_hidden_size=64,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    )
    text = _text(tokenizer, head_dim=16)
    text["rope_parameters"]["mrope_interleaved"] = True
    return Qwen3VLConfig(text_config=text, vision_config=vision, **special_token_ids(tokenizer))


TINY = {
    "qwen2_vl": (tiny_qwen2_vl_config, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (tiny_qwen2_5_vl_config, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (tiny_qwen3_vl_config, Qwen3VLForConditionalGeneration),
}


def make_tiny_qwen_vl(version: str, tokenizer, seed: int = 0):
    """A plain transformers Qwen-VL model (`version`: a key of TINY), random weights, in eval mode."""
    config_of, model_class = TINY[version]
    torch.manual_seed(seed)
    model = model_class(config_of(tokenizer))
    # Random init leaves biases at zero and norms at one; perturb them so tests see every weight.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def preprocessor_config(version: str) -> dict:
    """preprocessor_config.json as the hub's Qwen-VL folders write it, at the tiny sizes."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(
            version, "Qwen3VLProcessor"
        ),
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": MERGE_SIZE,
        "resample": 3,
    }


def save_hub_layout(model, tokenizer, version: str, directory: str, hub_keys: bool = True) -> str:
    """The hub's layout (`Qwen/Qwen2.5-VL-7B-Instruct`): config.json, safetensors shards (hub keys `model.*`,
    `visual.*` for Qwen2-VL and Qwen2.5-VL when `hub_keys`), preprocessor_config.json, tokenizer files with the
    chat template, chat_template.json."""
    from safetensors.torch import save_file

    from .key_layouts import HUB, LAYOUTS

    model.save_pretrained(directory, max_shard_size="200KB")
    if hub_keys and version != "qwen3_vl":  # Qwen3-VL's hub folders already use transformers 5's names
        _rename_shards(directory, LAYOUTS[HUB].to_checkpoint, save_file)
    tokenizer.save_pretrained(directory)
    _write_json(os.path.join(directory, "preprocessor_config.json"), preprocessor_config(version))
    _write_json(os.path.join(directory, "chat_template.json"), {"chat_template": tokenizer.chat_template})
    return directory


def _rename_shards(directory: str, rename, save_file):
    from safetensors.torch import load_file

    index_path = os.path.join(directory, "model.safetensors.index.json")
    shards = (
        sorted(set(json.load(open(index_path))["weight_map"].values()))
        if os.path.isfile(index_path)
        else ["model.safetensors"]
    )
    weight_map = {}
    for shard in shards:
        path = os.path.join(directory, shard)
        tensors = {rename(key): tensor for key, tensor in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
        weight_map.update({key: shard for key in tensors})
    if os.path.isfile(index_path):
        index = json.load(open(index_path))
        index["weight_map"] = weight_map
        _write_json(index_path, index)


def _write_json(path: str, content: dict):
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)
