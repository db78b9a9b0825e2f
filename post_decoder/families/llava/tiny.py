"""Tiny LLaVA-shaped models for tests, benchmarks and the toy world, saved in the real checkpoint formats
(never imported by the product itself).

Nothing here downloads: the vision tower is a tiny CLIP, the LLM a tiny Llama, and the tokenizer
a small SentencePiece model trained on the spot (the same kind of tokenizer as Llama 2's).
"""

import json
import os

import torch
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ...tiny_parts import train_llama_style_tokenizer
from .conversation import SYSTEM_PROMPT
from .key_layouts import LAYOUTS, ORIGINAL
from .tokenizer import LlavaLlamaTokenizer

_TOKENIZER_CORPUS = [
    SYSTEM_PROMPT,
    "USER: <image>\nIs there a dog in the image? ASSISTANT: Yes, there is a dog in the image.",
    "USER: Describe the image in detail. ASSISTANT: The image shows a red circle next to a blue square.",
    "Answer the question using a single word or phrase. No, there is no cat. There are two cups on a table.",
]


def train_tiny_tokenizer(
    directory: str, corpus: list[str] | None = None, vocab_size: int = 400, remove_extra_whitespaces: bool = True
):
    """`tiny_parts.train_llama_style_tokenizer` on `corpus` (by default a few of LLaVA's prompts and answers)."""
    return train_llama_style_tokenizer(directory, corpus or _TOKENIZER_CORPUS, vocab_size, remove_extra_whitespaces)


def tiny_llava_config(
    text_vocab_size: int,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden_size: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
) -> LlavaConfig:
    """LLaVA-1.5's shape in miniature: image and pad tokens after the text vocabulary, embeddings
    padded to a multiple of 64, layer -2 of the tower without CLS, a 2-layer GELU projector."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=3,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        vocab_size=_padded(text_vocab_size + 2),
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=text_vocab_size + 1,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=text_vocab_size,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=text_vocab_size + 1,
    )


def _padded(size: int, multiple: int = 64) -> int:
    return (size + multiple - 1) // multiple * multiple


def make_tiny_llava(text_vocab_size: int, seed: int = 0, **config_kwargs) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_llava_config(text_vocab_size, **config_kwargs))
    # Random init leaves biases at zero and norms at one; perturb them so tests see every weight.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def clip_preprocessor_config(image_size: int) -> dict:
    """The preprocessor_config.json of openai/clip-vit-large-patch14-336, at another size."""
    return {
        "crop_size": image_size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
        "size": image_size,
    }


def save_clip_tower(model: LlavaForConditionalGeneration, directory: str) -> str:
    """Save the vision tower as a full CLIP checkpoint (as on the hub), with its preprocessor config."""
    vision_config = model.config.vision_config
    text_config = CLIPTextConfig(
        hidden_size=vision_config.hidden_size,
        intermediate_size=vision_config.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=vision_config.num_attention_heads,
        projection_dim=vision_config.projection_dim,
    )
    clip = CLIPModel(
        CLIPConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            projection_dim=vision_config.projection_dim,
        )
    )
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    clip.save_pretrained(directory)
    _write_json(
        os.path.join(directory, "preprocessor_config.json"), clip_preprocessor_config(vision_config.image_size)
    )
    return directory


def save_llava_hf(model: LlavaForConditionalGeneration, tokenizer, directory: str) -> str:
    """The llava-hf layout (`llava-hf/llava-1.5-7b-hf`): transformers' checkpoint, the tokenizer
    with `<image>` and `<pad>`, a CLIP preprocessor config."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    size = model.config.vision_config.image_size
    _write_json(
        os.path.join(directory, "preprocessor_config.json"),
        {
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": size, "width": size},
            "size": {"shortest_edge": size},
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_convert_rgb": True,
            "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD),
            "resample": 3,
        },
    )
    return directory


def save_original_llava(
    model: LlavaForConditionalGeneration,
    text_vocab_size: int,
    tokenizer_directory: str,
    directory: str,
    sentencepiece: bool = False,
) -> str:
    """The original LLaVA-1.5 layout (`liuhaotian/llava-v1.5-7b`): `LlavaLlamaForCausalLM` weights in
    two `.bin` shards with an index, `model.mm_projector.{0,2}`, the text vocabulary only (no image
    token), and the CLIP tower saved apart and named by `mm_vision_tower`.

    sentencepiece: ship the tokenizer as the real folders do (`tokenizer.model` + `tokenizer_config.json`,
    which `post_decoder.llama_tokenizer.load_tokenizer` reads with LLaVA's slow ids); by default a
    `tokenizer.json` only."""
    os.makedirs(directory, exist_ok=True)
    tower_directory = save_clip_tower(model, os.path.join(directory, "clip_tower"))
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.vision_tower."):
            continue  # LLaVA-1.5 keeps the tower out of its checkpoint
        renamed = LAYOUTS[ORIGINAL].to_checkpoint(name)
        if renamed in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:text_vocab_size]
        state[renamed] = tensor.clone().contiguous()
    names = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({key: state[key] for key in keys}, os.path.join(directory, shard))
        weight_map.update({key: shard for key in keys})
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    _write_json(
        os.path.join(directory, "pytorch_model.bin.index.json"),
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    config = model.config
    text = config.text_config.to_dict()
    for key in ("model_type", "architectures", "dtype", "transformers_version", "pad_token_id"):
        text.pop(key, None)
    _write_json(
        os.path.join(directory, "config.json"),
        {
            **text,
            "architectures": ["LlavaLlamaForCausalLM"],
            "model_type": "llava",
            "vocab_size": text_vocab_size,
            "pad_token_id": 0,
            "mm_vision_tower": tower_directory,
            "mm_hidden_size": config.vision_config.hidden_size,
            "mm_vision_select_layer": config.vision_feature_layer,
            "mm_vision_select_feature": "patch",
            "mm_projector_type": "mlp2x_gelu",
            "mm_patch_merge_type": "flat",
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "image_aspect_ratio": "pad",
            "tune_mm_mlp_adapter": False,
            "freeze_mm_mlp_adapter": False,
            "use_mm_proj": True,
            "tokenizer_model_max_length": 2048,
            "tokenizer_padding_side": "right",
            "torch_dtype": "float32",
        },
    )
    tokenizer = (LlavaLlamaTokenizer if sentencepiece else AutoTokenizer).from_pretrained(tokenizer_directory)
    tokenizer.save_pretrained(directory)
    return directory


def _write_json(path: str, content: dict):
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)
