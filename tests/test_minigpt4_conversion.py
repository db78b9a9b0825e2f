"""Converting a MiniGPT-4 release (tiny files in the original key names) into a folder we load.

Expected values written in below were obtained by running the upstream code beside ours on the same tiny files:
  - transformers' BLIP-2 conversion (convert_blip_2_original_to_pytorch.py of transformers 4.46.3, the last
    release that ships it), with local stand-ins for LAVIS, the hub and the model class, on the Vicuna version's
    files (MiniGPT-4's `llama_proj` passed as BLIP-2-OPT's `opt_proj`): every tensor it renames equals ours, and
    `EXPECTED_NAMES` is its renaming (it keeps `Qformer.bert.embeddings.position_ids`, which it then reports as
    unexpected; we leave it out, as MiniGPT-4 does);
  - MiniGPT-4's own EVA ViT (minigpt4/models/eva_vit.py, `VisionTransformer` as `create_eva_vit_g` builds it, at the
    tiny size, timm's helpers stubbed) and `ln_vision` (torch's LayerNorm) on the tiny `eva_vit_g.pth`:
    `EVA_FEATURES` are its outputs on a seeded image; for the Llama-2 version also `llama_proj` of its 4-patch groups.
"""

import pytest
import torch

from post_decoder.builder import load_pretrained_model
from post_decoder.errors import InputError
from post_decoder.families.minigpt4 import MiniGPT4ForConditionalGeneration
from post_decoder.families.minigpt4.original import convert_minigpt4, main, read_checkpoint, state_in_our_names
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    minigpt4_batch,
    save_original_minigpt4,
    state_in_original_names,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
)

# transformers' BLIP-2 conversion's names for layer 0 of each part (the tiny Q-Former's layer 1 has no
# cross-attention: BLIP-2's every other layer); `opt_proj` written as MiniGPT-4's `llama_proj`.
THEIR_LAYER, OUR_LAYER = "Qformer.bert.encoder.layer.0.", "qformer.encoder.layer.0."
EXPECTED_NAMES = {
    "Qformer.bert.embeddings.LayerNorm.bias": "qformer.layernorm.bias",
    "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
    THEIR_LAYER + "attention.output.LayerNorm.bias": OUR_LAYER + "attention.output.LayerNorm.bias",
    THEIR_LAYER + "attention.output.LayerNorm.weight": OUR_LAYER + "attention.output.LayerNorm.weight",
    THEIR_LAYER + "attention.output.dense.bias": OUR_LAYER + "attention.output.dense.bias",
    THEIR_LAYER + "attention.output.dense.weight": OUR_LAYER + "attention.output.dense.weight",
    THEIR_LAYER + "attention.self.key.bias": OUR_LAYER + "attention.attention.key.bias",
    THEIR_LAYER + "attention.self.key.weight": OUR_LAYER + "attention.attention.key.weight",
    THEIR_LAYER + "attention.self.query.bias": OUR_LAYER + "attention.attention.query.bias",
    THEIR_LAYER + "attention.self.query.weight": OUR_LAYER + "attention.attention.query.weight",
    THEIR_LAYER + "attention.self.value.bias": OUR_LAYER + "attention.attention.value.bias",
    THEIR_LAYER + "attention.self.value.weight": OUR_LAYER + "attention.attention.value.weight",
    THEIR_LAYER + "crossattention.output.LayerNorm.bias": OUR_LAYER + "crossattention.output.LayerNorm.bias",
    THEIR_LAYER + "crossattention.output.LayerNorm.weight": OUR_LAYER + "crossattention.output.LayerNorm.weight",
    THEIR_LAYER + "crossattention.output.dense.bias": OUR_LAYER + "crossattention.output.dense.bias",
    THEIR_LAYER + "crossattention.output.dense.weight": OUR_LAYER + "crossattention.output.dense.weight",
    THEIR_LAYER + "crossattention.self.key.bias": OUR_LAYER + "crossattention.attention.key.bias",
    THEIR_LAYER + "crossattention.self.key.weight": OUR_LAYER + "crossattention.attention.key.weight",
    THEIR_LAYER + "crossattention.self.query.bias": OUR_LAYER + "crossattention.attention.query.bias",
    THEIR_LAYER + "crossattention.self.query.weight": OUR_LAYER + "crossattention.attention.query.weight",
    THEIR_LAYER + "crossattention.self.value.bias": OUR_LAYER + "crossattention.attention.value.bias",
    THEIR_LAYER + "crossattention.self.value.weight": OUR_LAYER + "crossattention.attention.value.weight",
    THEIR_LAYER + "intermediate_query.dense.bias": OUR_LAYER + "intermediate_query.dense.bias",
    THEIR_LAYER + "intermediate_query.dense.weight": OUR_LAYER + "intermediate_query.dense.weight",
    THEIR_LAYER + "output_query.LayerNorm.bias": OUR_LAYER + "output_query.LayerNorm.bias",
    THEIR_LAYER + "output_query.LayerNorm.weight": OUR_LAYER + "output_query.LayerNorm.weight",
    THEIR_LAYER + "output_query.dense.bias": OUR_LAYER + "output_query.dense.bias",
    THEIR_LAYER + "output_query.dense.weight": OUR_LAYER + "output_query.dense.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "llama_proj.bias": "language_projection.bias",
    "llama_proj.weight": "language_projection.weight",
    "query_tokens": "query_tokens",
    "visual_encoder.blocks.0.attn.proj.bias": "vision_model.encoder.layers.0.self_attn.projection.bias",
    "visual_encoder.blocks.0.attn.proj.weight": "vision_model.encoder.layers.0.self_attn.projection.weight",
    "visual_encoder.blocks.0.attn.qkv.weight": "vision_model.encoder.layers.0.self_attn.qkv.weight",
    "visual_encoder.blocks.0.mlp.fc1.bias": "vision_model.encoder.layers.0.mlp.fc1.bias",
    "visual_encoder.blocks.0.mlp.fc1.weight": "vision_model.encoder.layers.0.mlp.fc1.weight",
    "visual_encoder.blocks.0.mlp.fc2.bias": "vision_model.encoder.layers.0.mlp.fc2.bias",
    "visual_encoder.blocks.0.mlp.fc2.weight": "vision_model.encoder.layers.0.mlp.fc2.weight",
    "visual_encoder.blocks.0.norm1.bias": "vision_model.encoder.layers.0.layer_norm1.bias",
    "visual_encoder.blocks.0.norm1.weight": "vision_model.encoder.layers.0.layer_norm1.weight",
    "visual_encoder.blocks.0.norm2.bias": "vision_model.encoder.layers.0.layer_norm2.bias",
    "visual_encoder.blocks.0.norm2.weight": "vision_model.encoder.layers.0.layer_norm2.weight",
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
}
# MiniGPT-4's EVA ViT + ln_vision on a torch.manual_seed(123) randn(2, 3, 32, 32) image: features[1, :3, :4]; for
# the Llama-2 version also llama_proj of the 4-patch groups, tokens[1, :2, :4].
EVA_FEATURES = {
    False: [
        [1.3834682703018188, -0.299480140209198, -1.9948920011520386, 0.2185843139886856],
        [0.8528597950935364, -0.8148068785667419, -2.1392805576324463, -1.3450249433517456],
        [2.1814448833465576, -1.1100233793258667, -1.6343783140182495, 0.475544810295105],
    ],
    True: [
        [0.5001116991043091, -8.579687710152939e-05, -0.6580406427383423, 1.3856068849563599],
        [-0.20602987706661224, -1.1479498147964478, -1.7070926427841187, -0.19485333561897278],
        [0.9759349226951599, -1.2957568168640137, -1.1855154037475586, 1.3322312831878662],
    ],
}
LLAMA2_TOKENS = [
    [0.25739699602127075, 0.1191796287894249, -0.12939321994781494, 0.167940154671669],
    [-0.616376519203186, -0.6942610740661621, 0.623971700668335, -1.1291160583496094],
]
VIT_LAYERS = 2


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("minigpt4_tokenizer"))
    train_tiny_minigpt4_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def text_vocab(tokenizer_dir):
    return len(tiny_minigpt4_tokenizer(tokenizer_dir)) - 2


@pytest.fixture(scope="module", params=[False, True], ids=["llama2", "vicuna0"])
def release(request, tokenizer_dir, text_vocab, tmp_path_factory):
    """(the tiny model, the paths of its release's files)."""
    model = make_tiny_minigpt4(text_vocab, has_qformer=request.param)
    folder = str(tmp_path_factory.mktemp("release"))
    return model, save_original_minigpt4(model, text_vocab, tokenizer_dir, folder)


def convert(paths, **overrides):
    arguments = dict(checkpoint=paths["minigpt4"], llama_model=paths["llama"], vit=paths["vit"])
    arguments.update(qformer=paths.get("qformer"), vit_layers=VIT_LAYERS)
    arguments.update(overrides)
    return convert_minigpt4(**arguments)


def test_the_renaming_is_transformers_blip2_conversions(release):
    model, _ = release
    original = {}
    for part, tensors in state_in_original_names(model).items():
        original.update({("visual_encoder." if part == "vit" else "") + name: t for name, t in tensors.items()})
    ours = state_in_our_names(original, VIT_LAYERS)
    for theirs, expected in EXPECTED_NAMES.items():
        if theirs in original:
            assert torch.equal(ours[expected], original[theirs]), theirs
    for name in original:  # every other layer and block follows layer 0's rule
        if ".1." in name and "q_bias" not in name and "v_bias" not in name:
            zeroth = name.replace("layer.1.", "layer.0.").replace("blocks.1.", "blocks.0.")
            assert torch.equal(ours[EXPECTED_NAMES[zeroth].replace(".0.", ".1.")], original[name]), name
    for block in range(VIT_LAYERS):  # EVA's q and v biases: one qkv bias [q, 0, v]
        q, v = (
            original[f"visual_encoder.blocks.{block}.attn.q_bias"],
            original[f"visual_encoder.blocks.{block}.attn.v_bias"],
        )
        assert torch.equal(ours[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"], torch.cat((q, 0 * q, v)))


def test_the_converted_model_is_the_tiny_model_and_its_vit_is_minigpt4s(release):
    model, paths = release
    converted, tokenizer, processor = convert(paths)
    state = converted.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("language_model.") and ("embed_tokens" in name or "lm_head" in name):
            tensor, state[name] = tensor[: tokenizer.vocab_size], state[name][: tokenizer.vocab_size]
        assert torch.equal(state[name], tensor), name
    assert converted.config.has_qformer == model.config.has_qformer
    assert tokenizer.convert_tokens_to_ids("<ImageHere>") == converted.config.image_token_id == tokenizer.vocab_size
    assert processor.size == {"height": 32, "width": 32}

    torch.manual_seed(123)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, tokens = converted.encode_images(image)
    has_qformer = model.config.has_qformer
    torch.testing.assert_close(features[1, :3, :4], torch.tensor(EVA_FEATURES[has_qformer]), atol=1e-5, rtol=0)
    if not has_qformer:
        torch.testing.assert_close(tokens[1, :2, :4], torch.tensor(LLAMA2_TOKENS), atol=1e-5, rtol=0)


def test_the_command_writes_a_folder_load_pretrained_model_opens(release, tmp_path):
    model, paths = release
    out = str(tmp_path / "converted")
    arguments = ["--model-path", paths["minigpt4"], "--llama-model", paths["llama"], "--vit", paths["vit"]]
    if "qformer" in paths:
        arguments += ["--qformer", paths["qformer"]]
    main([*arguments, "--vit-layers", str(VIT_LAYERS), "--out", out, "--dtype", "float32"])
    tokenizer, loaded, processor, _ = load_pretrained_model(out, post_decoder="post_interaction")
    assert isinstance(loaded, MiniGPT4ForConditionalGeneration) and loaded.post_decoder is not None
    assert processor.size == {"height": 32, "width": 32}
    from_pretrained = MiniGPT4ForConditionalGeneration.from_pretrained(out).eval()
    batch = minigpt4_batch(loaded, tokenizer, ["Is there a dog in the image?"])
    with torch.no_grad():
        expected = model(**batch).logits[..., : tokenizer.vocab_size]
        torch.testing.assert_close(loaded(**batch).logits[..., : tokenizer.vocab_size], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            from_pretrained(**batch).logits[..., : tokenizer.vocab_size], expected, atol=1e-5, rtol=0
        )
    with pytest.raises(SystemExit):  # never written over
        main([*arguments, "--vit-layers", str(VIT_LAYERS), "--out", out])


def resaved(path, edit, tmp_path, name):
    state = read_checkpoint(path, "")
    edit(state)
    new = str(tmp_path / name)
    torch.save({"model": state}, new)
    return new


def test_missing_and_extra_tensors_are_errors_that_name_them(release, tmp_path):
    model, paths = release
    vit = resaved(paths["vit"], lambda s: s.pop("blocks.1.mlp.fc2.bias"), tmp_path, "vit_missing.pth")
    with pytest.raises(InputError, match=r"(?s)missing.*vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        convert(paths, vit=vit)
    extra = resaved(paths["minigpt4"], lambda s: s.update(stray=torch.zeros(1)), tmp_path, "extra.pth")
    with pytest.raises(InputError, match=r"(?s)unexpected.*stray"):
        convert(paths, checkpoint=extra)
    no_q = resaved(paths["vit"], lambda s: s.pop("blocks.0.attn.q_bias"), tmp_path, "no_q.pth")
    with pytest.raises(InputError, match=r"visual_encoder\.blocks\.0\.attn\.q_bias"):
        convert(paths, vit=no_q)


def test_what_minigpt4_itself_leaves_out_is_left_out(release, tmp_path):
    """A ViT block past the depth built (BLIP-2 drops EVA-CLIP's last layer), the Q-Former's text parts and BLIP-2's
    own projection are in real files and not in MiniGPT-4's model: the conversion gives the same model."""
    model, paths = release

    def add_a_last_block(state):
        state.update(
            {name.replace("blocks.1.", "blocks.2."): t + 1 for name, t in state.items() if "blocks.1." in name}
        )

    vit = resaved(paths["vit"], add_a_last_block, tmp_path, "vit_40.pth")
    changed = dict(paths, vit=vit)
    if "qformer" in paths:

        def add_text_parts(state):
            state["Qformer.bert.embeddings.position_ids"] = torch.arange(8)[None]
            state["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.ones(2, 2)
            state["Qformer.cls.predictions.bias"] = torch.ones(2)
            state["t5_proj.weight"] = torch.ones(2, 2)

        changed["qformer"] = resaved(paths["qformer"], add_text_parts, tmp_path, "qformer_text.pth")
    converted, _, _ = convert(changed)
    reference, _, _ = convert(paths)
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), reference.state_dict().values()))
    assert converted.config.vision_config.num_hidden_layers == VIT_LAYERS
    with pytest.raises(InputError, match="missing"):  # and asked for three blocks, a two-block file is short
        convert(paths, vit_layers=3)


def test_the_wrong_version_is_named(release, text_vocab, tmp_path):
    """llama_proj's width says which MiniGPT-4 it is: a Q-Former file with the Llama-2 version, or none with the
    Vicuna version, is an error that says what to pass."""
    model, paths = release
    if model.config.has_qformer:
        with pytest.raises(InputError, match="pass BLIP-2's Q-Former checkpoint as --qformer"):
            convert(paths, qformer=None)
    else:
        qformer = str(tmp_path / "blip2_pretrained.pth")
        torch.save(
            {"model": state_in_original_names(make_tiny_minigpt4(text_vocab, has_qformer=True))["qformer"]}, qformer
        )
        with pytest.raises(InputError, match="(?s)llama_proj takes 704 features.*leave --qformer out"):
            convert(paths, qformer=qformer)
