"""Convert a released MiniGPT-4 into a folder that `load_pretrained_model` and `from_pretrained` open.

A MiniGPT-4 release is several files, as its eval configs name them (Vision-CAIR/MiniGPT-4, minigpt4/models/):
  - the MiniGPT-4 checkpoint (`ckpt`, e.g. `pretrained_minigpt4_llama2_7b.pth`): `{"model": {"llama_proj.weight",
    "llama_proj.bias"}}` (trainable parameters only);
  - the EVA ViT-g weights `eva_vit_g.pth` (bare EVA names: `cls_token`, `pos_embed`, `patch_embed.proj.*`,
    `blocks.N.{norm1,attn.qkv.weight,attn.q_bias,attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`); MiniGPT-4 builds
    39 blocks (`create_eva_vit_g`) and ignores any later one (BLIP-2 drops EVA-CLIP's last layer);
  - the Vicuna version only: BLIP-2's Q-Former checkpoint (`q_former_model`, `blip2_pretrained_flant5xxl.pth`):
    `{"model": {"ln_vision.*", "Qformer.bert.*", "query_tokens", ...}}`;
  - the language model it names (`llama_model`): a Hugging Face Llama folder (Llama-2-7b-chat or Vicuna).
MiniGPT-4 loads them in that order, each over the last (ViT, then Q-Former file, then checkpoint), and so do we.
The Llama-2 version reads no Q-Former file, so its `ln_vision` is a fresh LayerNorm (weight 1, bias 0) unless the
checkpoint holds one.

Names follow transformers' BLIP-2 conversion (models/blip_2/convert_blip_2_original_to_pytorch.py): `visual_encoder`
-> `vision_model` (`ln_vision` -> `vision_model.post_layernorm`; EVA's `q_bias` and `v_bias` -> one `qkv.bias`
[q, 0, v]), `Qformer.bert` -> `qformer` (`attention.self` -> `attention.attention`), and, as its `opt_proj` /
`t5_proj`, MiniGPT-4's `llama_proj` -> `language_projection`. Tensors MiniGPT-4's own model has no place for (it
sets the Q-Former's text parts to None and loads with strict=False) are left out, by name; any other name that does
not fit, and any tensor the model needs that no file holds, is an InputError listing them. Then `<ImageHere>` and
`<pad>` are added after the vocabulary as for LLaVA (`post_decoder.embedding_rows.add_image_and_pad_rows`).

    python -m post_decoder.families.minigpt4 --model-path pretrained_minigpt4_llama2_7b.pth \
        --llama-model Llama-2-7b-chat-hf --vit eva_vit_g.pth --out minigpt4-llama2-7b
"""

import argparse
import re
import zipfile

import torch
from accelerate import init_empty_weights
from transformers import Blip2QFormerConfig, Blip2VisionConfig, LlamaConfig

from ...embedding_rows import add_image_and_pad_rows
from ...errors import InputError, run_command
from ...llama_tokenizer import load_tokenizer
from ...saving import check_new_folder, load_sharded_state_dict, load_state_strictly, readable_weight_file
from .configuration import MiniGPT4Config
from .conversation import add_minigpt4_tokens
from .image_processing import minigpt4_image_processor

EVA_VIT_G_LAYERS = 39  # create_eva_vit_g(depth=39)
EVA_HEAD_WIDTH, BERT_HEAD_WIDTH = 88, 64  # EVA ViT-g: 1408 / 16 heads; the Q-Former (BERT-base): 768 / 12

# (MiniGPT-4's name, ours) prefixes; the first that matches renames a name.
_PREFIXES = (
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("ln_vision.", "vision_model.post_layernorm."),
    ("Qformer.bert.embeddings.LayerNorm.", "qformer.layernorm."),
    ("Qformer.bert.encoder.", "qformer.encoder."),
    ("query_tokens", "query_tokens"),
    ("llama_proj.", "language_projection."),
    ("llama_model.", "language_model."),
)
_VIT_BLOCK = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(.+)$")
_VIT_BLOCK_PARTS = (
    ("norm1.", "layer_norm1."),
    ("norm2.", "layer_norm2."),
    ("attn.qkv.weight", "self_attn.qkv.weight"),
    ("attn.proj.", "self_attn.projection."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_QFORMER_SELF_ATTENTION = re.compile(r"\.(attention|crossattention)\.self\.")
# What MiniGPT-4's model has no place for: the Q-Former's text parts (set to None), BLIP-2's own language model and
# its projection, EVA-CLIP's head, and ViT blocks past the ones built (checked against the depth separately).
_LEFT_OUT = re.compile(
    r"^(Qformer\.cls\.|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.|"
    r"Qformer\.bert\.embeddings\.position_ids$|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.|"
    r"(t5|opt)_(proj|model)\.|visual_encoder\.(norm|fc_norm|head)\.)"
)


def to_ours(name: str, vit_layers: int) -> str | None:
    """Our name of a tensor named as in MiniGPT-4's model; None for one it leaves out (see `_LEFT_OUT`). Names no
    rule covers come back unchanged (the strict load then lists them as unexpected)."""
    if _LEFT_OUT.match(name):
        return None
    block = _VIT_BLOCK.match(name)
    if block:
        index, part = int(block.group(1)), block.group(2)
        if index >= vit_layers:
            return None
        for theirs, ours in _VIT_BLOCK_PARTS:
            if part.startswith(theirs):
                return f"vision_model.encoder.layers.{index}.{ours}{part[len(theirs) :]}"
        return name
    for theirs, ours in _PREFIXES:
        if name.startswith(theirs):
            name = ours + name[len(theirs) :]
            return _QFORMER_SELF_ATTENTION.sub(r".\1.attention.", name) if ours == "qformer.encoder." else name
    return name


def state_in_our_names(original: dict[str, torch.Tensor], vit_layers: int) -> dict[str, torch.Tensor]:
    """MiniGPT-4's tensors (its model's names) renamed to ours; EVA's q and v biases become one qkv bias."""
    state, biases = {}, {}
    for name, tensor in original.items():
        block = _VIT_BLOCK.match(name)
        if block and block.group(2) in ("attn.q_bias", "attn.v_bias"):
            if int(block.group(1)) < vit_layers:
                biases.setdefault(int(block.group(1)), {})[block.group(2)] = tensor
            continue
        ours = to_ours(name, vit_layers)
        if ours is not None:
            state[ours] = tensor
    for index, pair in sorted(biases.items()):
        if len(pair) != 2:
            missing = {"attn.q_bias", "attn.v_bias"} - set(pair)
            raise InputError(f"the EVA ViT weights have no visual_encoder.blocks.{index}.{missing.pop()}")
        q_bias, v_bias = pair["attn.q_bias"], pair["attn.v_bias"]
        state[f"vision_model.encoder.layers.{index}.self_attn.qkv.bias"] = torch.cat(
            (q_bias, torch.zeros_like(v_bias), v_bias)
        )
    return state


def read_checkpoint(path: str, flag: str) -> dict[str, torch.Tensor]:
    """A `.pth` of MiniGPT-4 or LAVIS (`{"model": {name: tensor}}`, other entries ignored) or a bare state dict,
    read with `weights_only=True`."""
    try:
        with readable_weight_file(path):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise InputError(f"{flag} {path}: no such file") from None
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"{flag} {path} is not a state dict (name -> tensor, or {{'model': name -> tensor}})")
    return state


def vision_config_of(vit: dict[str, torch.Tensor], vit_layers: int, where: str) -> Blip2VisionConfig:
    """EVA ViT-g's shape, read from its tensors (MiniGPT-4's `create_eva_vit_g` fixes the same values)."""
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    absent = [name for name in needed if name not in vit]
    if absent:
        raise InputError(f"{where} is not an EVA ViT state dict: it has no {', '.join(absent)}")
    width, patch = vit["cls_token"].shape[-1], vit["patch_embed.proj.weight"].shape[-1]
    grid = round((vit["pos_embed"].shape[1] - 1) ** 0.5)
    return Blip2VisionConfig(
        hidden_size=width,
        intermediate_size=vit["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=vit_layers,
        num_attention_heads=width // EVA_HEAD_WIDTH,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # EVA's blocks; ln_vision's is MiniGPT4Config.ln_vision_eps
        qkv_bias=True,
    )


def qformer_config_of(state: dict[str, torch.Tensor], vision_width: int, where: str) -> Blip2QFormerConfig:
    """The Q-Former's shape, read from BLIP-2's checkpoint (BERT-base, cross-attention every other layer)."""
    if "query_tokens" not in state:
        raise InputError(f"{where} is not a BLIP-2 Q-Former checkpoint: it has no query_tokens")
    layers = {int(found) for name in state for found in re.findall(r"^Qformer\.bert\.encoder\.layer\.(\d+)\.", name)}
    crossing = sorted(
        {int(found) for name in state for found in re.findall(r"^Qformer\.bert\.encoder\.layer\.(\d+)\.crossat", name)}
    )
    frequency = crossing[1] - crossing[0] if len(crossing) > 1 else max(len(layers), 1)
    if not layers or crossing != list(range(0, len(layers), frequency)):
        raise InputError(
            f"{where}: its Q-Former layers {sorted(layers)} (cross-attention in {crossing}) are not BLIP-2's"
        )
    width = state["query_tokens"].shape[-1]
    return Blip2QFormerConfig(
        hidden_size=width,
        num_hidden_layers=len(layers),
        num_attention_heads=width // BERT_HEAD_WIDTH,
        intermediate_size=state["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        cross_attention_frequency=frequency,
        encoder_hidden_size=vision_width,
    )


def convert_minigpt4(
    checkpoint: str,
    llama_model: str,
    vit: str,
    qformer: str | None = None,
    vit_layers: int = EVA_VIT_G_LAYERS,
    dtype: torch.dtype = torch.float32,
):
    """(model, tokenizer, image_processor) of a MiniGPT-4 release; `qformer` given: the Vicuna version (Q-Former),
    else the Llama-2 version. `model` is a `MiniGPT4ForConditionalGeneration` on the CPU."""
    from .modeling import MiniGPT4ForConditionalGeneration

    vit_state = read_checkpoint(vit, "--vit")
    minigpt4_state = read_checkpoint(checkpoint, "--model-path")
    qformer_state = read_checkpoint(qformer, "--qformer") if qformer else {}
    if "llama_proj.weight" not in minigpt4_state:
        raise InputError(f"--model-path {checkpoint} has no llama_proj.weight: name MiniGPT-4's checkpoint (ckpt)")
    vision_config = vision_config_of(vit_state, vit_layers, f"--vit {vit}")
    text_config = LlamaConfig.from_pretrained(llama_model)
    values = dict(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), has_qformer=bool(qformer))
    if qformer:
        values["qformer_config"] = qformer_config_of(qformer_state, vision_config.hidden_size, qformer).to_dict()
        values["num_query_tokens"] = qformer_state["query_tokens"].shape[1]
    config = MiniGPT4Config(**values)
    projection_input = minigpt4_state["llama_proj.weight"].shape[1]
    if projection_input != config.projector_input_size:
        version = "Q-Former output" if qformer else "four ViT features side by side (the Llama-2 version)"
        hint = (
            "leave --qformer out" if qformer else "pass BLIP-2's Q-Former checkpoint as --qformer (the Vicuna version)"
        )
        raise InputError(
            f"--model-path {checkpoint}: llama_proj takes {projection_input} features, not the "
            f"{config.projector_input_size} of the {version}: {hint}"
        )

    # MiniGPT-4's load order: the ViT, then the Q-Former file, then the checkpoint, each over the last.
    original = {"visual_encoder." + name: tensor for name, tensor in vit_state.items()}
    original.update(qformer_state)
    original.update(minigpt4_state)
    if not qformer and "ln_vision.weight" not in original:
        width = vision_config.hidden_size
        original.update({"ln_vision.weight": torch.ones(width), "ln_vision.bias": torch.zeros(width)})
    state = state_in_our_names(original, vit_layers)
    state.update({"language_model." + name: tensor for name, tensor in load_sharded_state_dict(llama_model).items()})
    state = {name: tensor.to(dtype) for name, tensor in state.items() if not name.endswith("rotary_emb.inv_freq")}

    with init_empty_weights(include_buffers=False):
        model = MiniGPT4ForConditionalGeneration(config)
    files = ", ".join(path for path in (checkpoint, vit, qformer, llama_model) if path)
    load_state_strictly(model, state, f"weights of the MiniGPT-4 release ({files})", assign=True)

    tokenizer = load_tokenizer(llama_model)
    text_vocab = text_config.vocab_size
    if len(tokenizer) != text_vocab:
        raise InputError(f"tokenizer of {llama_model} has {len(tokenizer)} tokens, its config.json says {text_vocab}")
    add_minigpt4_tokens(tokenizer)
    add_image_and_pad_rows(model, text_vocab)
    model.config.image_token_index = text_vocab
    model.config.text_config.pad_token_id = text_vocab + 1
    return model.eval(), tokenizer, minigpt4_image_processor(vision_config.image_size)


def main(argv=None):
    return run_command(_convert, argv, "post_decoder.families.minigpt4")


def _convert(argv):
    parser = argparse.ArgumentParser(
        prog="python -m post_decoder.families.minigpt4",
        description="Convert a MiniGPT-4 release (its .pth, the EVA ViT, the Q-Former for the Vicuna version, the "
        "Llama folder) into one folder that load_pretrained_model and from_pretrained open.",
    )
    parser.add_argument("--model-path", required=True, help="MiniGPT-4's checkpoint (.pth with llama_proj), its ckpt")
    parser.add_argument("--llama-model", required=True, help="the Hugging Face Llama folder it names (llama_model)")
    parser.add_argument("--vit", required=True, help="EVA ViT-g weights (LAVIS' eva_vit_g.pth)")
    parser.add_argument(
        "--qformer", help="BLIP-2's Q-Former checkpoint (blip2_pretrained_flant5xxl.pth): the Vicuna version only"
    )
    parser.add_argument("--vit-layers", type=int, default=EVA_VIT_G_LAYERS, help="ViT blocks built (MiniGPT-4: 39)")
    parser.add_argument("--out", required=True, help="new folder for the converted checkpoint")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    args = parser.parse_args(argv)
    check_new_folder(args.out, "--out", empty_is_new=True)
    from ...saving import save_model_folder

    model, tokenizer, image_processor = convert_minigpt4(
        args.model_path, args.llama_model, args.vit, args.qformer, args.vit_layers, getattr(torch, args.dtype)
    )
    save_model_folder(model, tokenizer, image_processor, args.out)
    print(f"converted {args.model_path} -> {args.out}")


if __name__ == "__main__":
    main()
