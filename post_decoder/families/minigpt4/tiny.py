"""Tiny MiniGPT-4s for tests (never imported by the product): a tiny EVA-shaped ViT, a tiny Q-Former (the Vicuna
version) or none (the Llama-2 version), a tiny Llama, a SentencePiece tokenizer trained on the spot, and writers of
the original release's files (EVA ViT state dict, BLIP-2 Q-Former checkpoint, MiniGPT-4's `llama_proj` checkpoint,
a Hugging Face Llama folder) in their own key names.
"""

import copy
import os
import re
import shutil

import torch
from transformers import AutoTokenizer, Blip2QFormerConfig, Blip2VisionConfig, LlamaConfig, LlamaForCausalLM

from ...llama_tokenizer import load_tokenizer
from ...tiny_parts import add_noise, train_llama_style_tokenizer
from .configuration import MiniGPT4Config
from .conversation import SYSTEM_PROMPT, add_minigpt4_tokens
from .modeling import MiniGPT4ForConditionalGeneration

# EVA ViT-g's heads are 88 wide and BERT's (the Q-Former's) 64 wide; the tiny ones keep those head widths, so the
# converter reads the head counts from the tensors' widths, as for the real files.
TINY_VISION_WIDTH, TINY_QFORMER_WIDTH = 176, 128

_CORPUS = [
    SYSTEM_PROMPT,
    "[INST] <Img></Img> Is there a dog in the image? [/INST] Yes, there is a dog in the image.</s>",
    "###Human: <Img></Img> Describe the image in detail. ###Assistant: A red circle next to a blue square.###",
    "No, there is no cat. There are two cups on a table. What is in the picture?",
]


def train_tiny_minigpt4_tokenizer(directory: str):
    """A Llama-style SentencePiece tokenizer (`tokenizer.model`, as Llama-2's folders ship it), without MiniGPT-4's
    added tokens (the converter adds them)."""
    train_llama_style_tokenizer(directory, _CORPUS)
    return AutoTokenizer.from_pretrained(directory)


def _padded(size: int, multiple: int = 64) -> int:
    return (size + multiple - 1) // multiple * multiple


def tiny_minigpt4_config(text_vocab_size: int, has_qformer: bool = False, hidden_size: int = 64) -> MiniGPT4Config:
    """MiniGPT-4's shape in miniature: image and pad tokens after the text vocabulary (rows padded to 64), a
    32 x 32 image in 8 x 8 patches (16 patches: 4 image tokens for the Llama-2 version, 4 queries for Vicuna's)."""
    vision = Blip2VisionConfig(
        hidden_size=TINY_VISION_WIDTH,
        intermediate_size=2 * TINY_VISION_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=TINY_VISION_WIDTH // 88,
        image_size=32,
        patch_size=8,
        initializer_range=0.02,  # BLIP-2's own 1e-10 would leave every patch feature alike
    )
    qformer = Blip2QFormerConfig(
        hidden_size=TINY_QFORMER_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=TINY_QFORMER_WIDTH // 64,
        intermediate_size=2 * TINY_QFORMER_WIDTH,
        cross_attention_frequency=2,
        encoder_hidden_size=TINY_VISION_WIDTH,
    )
    text = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=_padded(text_vocab_size + 2),
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=text_vocab_size + 1,
    )
    return MiniGPT4Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=text_vocab_size,
        has_qformer=has_qformer,
    )


def make_tiny_minigpt4(text_vocab_size: int, has_qformer: bool = False, seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    model = MiniGPT4ForConditionalGeneration(tiny_minigpt4_config(text_vocab_size, has_qformer, **config_kwargs))
    # Random init leaves biases at zero, norms at one and the queries at zero: perturb them so tests see every
    # weight. The ViT's key bias stays zero, as EVA has none (its checkpoints hold q_bias and v_bias only).
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or name == "query_tokens":
                parameter.add_(0.1 * torch.randn_like(parameter))
            if name.endswith("self_attn.qkv.bias"):
                parameter[parameter.shape[0] // 3 : 2 * parameter.shape[0] // 3] = 0
    return model.eval()


def state_in_original_names(model: MiniGPT4ForConditionalGeneration) -> dict[str, dict[str, torch.Tensor]]:
    """The vision, Q-Former and projection tensors as the release's files name them: `vit` (bare EVA names),
    `qformer` (LAVIS' BLIP-2 names, with `ln_vision`), `minigpt4` (`llama_proj.*`). The reverse of
    `original.state_in_our_names`, written out by hand so that a test of one checks the other."""
    vit, qformer, minigpt4 = {}, {}, {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.clone()
        if name.startswith("vision_model.encoder.layers."):
            index, part = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.+)$", name).groups()
            if part == "self_attn.qkv.bias":
                third = tensor.shape[0] // 3
                vit[f"blocks.{index}.attn.q_bias"], vit[f"blocks.{index}.attn.v_bias"] = (
                    tensor[:third],
                    tensor[2 * third :],
                )
                continue
            for ours, theirs in _VIT_BLOCK_PARTS:
                if part.startswith(ours):
                    vit[f"blocks.{index}.{theirs}{part[len(ours) :]}"] = tensor
        elif name.startswith("vision_model.embeddings."):
            vit[_VIT_EMBEDDINGS[name[len("vision_model.embeddings.") :]]] = tensor
        elif name.startswith("vision_model.post_layernorm."):
            (qformer if model.config.has_qformer else minigpt4)["ln_vision." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("qformer.layernorm."):
            qformer["Qformer.bert.embeddings.LayerNorm." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("qformer.encoder."):
            theirs = re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", name[len("qformer.") :])
            qformer["Qformer.bert." + theirs] = tensor
        elif name == "query_tokens":
            qformer[name] = tensor
        elif name.startswith("language_projection."):
            minigpt4["llama_proj." + name.rsplit(".", 1)[1]] = tensor
    return {"vit": vit, "qformer": qformer, "minigpt4": minigpt4}


_VIT_BLOCK_PARTS = (  # ours -> EVA's, inside a block
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.qkv.weight", "attn.qkv.weight"),
    ("self_attn.projection.", "attn.proj."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_VIT_EMBEDDINGS = {
    "class_embedding": "cls_token",
    "position_embedding": "pos_embed",
    "patch_embedding.weight": "patch_embed.proj.weight",
    "patch_embedding.bias": "patch_embed.proj.bias",
}


def save_original_minigpt4(
    model: MiniGPT4ForConditionalGeneration, text_vocab_size: int, tokenizer_dir: str, directory
):
    """The files a MiniGPT-4 release is run from, each in its own key names: `eva_vit_g.pth` (bare EVA names),
    `blip2_pretrained.pth` (`{"model": ...}`: `ln_vision`, `Qformer.bert.*`, `query_tokens`, as LAVIS saves
    them; the Vicuna version only), `minigpt4.pth` (`{"model": {"llama_proj.*"}}`; the Llama-2 version's
    `ln_vision` too, since no other file has it) and `llama/` (a Hugging Face Llama folder with the tiny
    SentencePiece tokenizer, the text vocabulary only). Returns the paths by role."""
    os.makedirs(directory, exist_ok=True)
    parts = state_in_original_names(model)
    paths = {
        "vit": os.path.join(directory, "eva_vit_g.pth"),
        "minigpt4": os.path.join(directory, "minigpt4.pth"),
        "llama": os.path.join(directory, "llama"),
    }
    torch.save(parts["vit"], paths["vit"])
    torch.save({"model": parts["minigpt4"]}, paths["minigpt4"])
    if model.config.has_qformer:
        paths["qformer"] = os.path.join(directory, "blip2_pretrained.pth")
        torch.save({"model": parts["qformer"]}, paths["qformer"])
    llama = LlamaForCausalLM(
        LlamaConfig(**{**model.config.text_config.to_dict(), "vocab_size": text_vocab_size, "pad_token_id": None})
    )
    state = model.language_model.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # the text vocabulary's rows only
        state[name] = state[name][:text_vocab_size]
    llama.load_state_dict(state)
    llama.save_pretrained(paths["llama"])
    shutil.copytree(tokenizer_dir, paths["llama"], dirs_exist_ok=True)
    return paths


def tiny_minigpt4_tokenizer(tokenizer_dir: str):
    """The tiny tokenizer with MiniGPT-4's added tokens (`<ImageHere>`, `<pad>`), as the converter gives it."""
    return add_minigpt4_tokens(load_tokenizer(tokenizer_dir))


def with_block(plain: MiniGPT4ForConditionalGeneration, variant: str, perturb: float = 0.0, seed: int = 0, **fields):
    """A copy of `plain` with a new block of `variant` (identity unless `perturb` adds seeded noise to it)."""
    from ...block import PostDecoderConfig

    model = MiniGPT4ForConditionalGeneration(copy.deepcopy(plain.config))
    model.load_state_dict(plain.state_dict())
    model.attach_post_decoder(PostDecoderConfig(variant=variant, **fields))
    if perturb:
        add_noise(model.post_decoder, perturb, seed)
    return model.eval()


def minigpt4_batch(model, tokenizer, questions, with_image=None, seed=0, padding_side="left", conv_mode=None):
    """Tokenized MiniGPT-4 prompts (padded) and pixel values for the samples that have an image."""
    from ...family import family_for

    family, config = family_for(model), model.config
    with_image = with_image or [True] * len(questions)
    rows = [
        family.tokenize_prompt(family.question_prompt(question, has_image, conv_mode=conv_mode), tokenizer, config)
        for question, has_image in zip(questions, with_image)
    ]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids, mask = [], []
    for row in rows:
        padding = [pad] * (width - len(row))
        ids.append(padding + row if padding_side == "left" else row + padding)
        ones, zeros = [1] * len(row), [0] * len(padding)
        mask.append(zeros + ones if padding_side == "left" else ones + zeros)
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    if any(with_image):
        batch["pixel_values"] = torch.randn(sum(with_image), 3, size, size, generator=generator)
    return batch
