import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from post_decoder import PostDecoderConfig
from post_decoder.block.files import save_post_decoder
from post_decoder.builder import load_pretrained_model
from post_decoder.families.llava import LlavaPostDecoderForConditionalGeneration
from post_decoder.families.llava.original import main as convert_main
from post_decoder.families.llava.tiny import save_llava_hf, save_original_llava
from post_decoder.saving import save_model_folder
from tests.helpers import image_batch, with_block

QUESTIONS = ["Is there a dog in the image?", "Describe the image in detail."]


def logits(model, tokenizer, seed=0):
    batch = image_batch(model, tokenizer, QUESTIONS, seed=seed)
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def original_folder(plain_llava, text_vocab_size, tokenizer_dir, tmp_path_factory):
    return save_original_llava(plain_llava, text_vocab_size, tokenizer_dir, str(tmp_path_factory.mktemp("original")))


@pytest.fixture(scope="module")
def converted_folder(original_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted") / "llava-hf")
    convert_main(["--model-path", original_folder, "--out", out, "--dtype", "float32"])
    return out


def test_original_and_llava_hf_formats_load_to_identical_logits(original_folder, converted_folder):
    tokenizer, from_original, processor, context_len = load_pretrained_model(original_folder)
    converted_tokenizer, from_hf, _, _ = load_pretrained_model(converted_folder)
    assert from_original.post_decoder is None and from_hf.post_decoder is None
    assert context_len == 2048
    assert tokenizer.convert_tokens_to_ids("<image>") == from_original.config.image_token_id
    assert converted_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert processor.do_pad
    assert torch.equal(logits(from_original, tokenizer), logits(from_hf, converted_tokenizer))


def test_original_conversion_keeps_every_trained_weight(
    plain_llava, llava_tokenizer, original_folder, text_vocab_size
):
    _, converted, _, _ = load_pretrained_model(original_folder)
    source = plain_llava.state_dict()
    for name, tensor in converted.state_dict().items():
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(tensor[:text_vocab_size], source[name][:text_vocab_size])
            assert tensor.shape[0] % 64 == 0 and tensor.shape[0] >= text_vocab_size + 2
        else:
            assert torch.equal(tensor, source[name]), name
    # At every real (non-padding) position, logits over the original vocabulary are the source model's.
    real = image_batch(plain_llava, llava_tokenizer, QUESTIONS)["attention_mask"].bool()
    expected = logits(plain_llava, llava_tokenizer)[..., :text_vocab_size][real]
    torch.testing.assert_close(
        logits(converted, llava_tokenizer)[..., :text_vocab_size][real], expected, atol=1e-6, rtol=1e-5
    )


def test_llava_hf_folder_in_the_hub_key_layout_loads_exactly(plain_llava, llava_tokenizer, tmp_path):
    folder = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "hf"))
    keys = load_file(os.path.join(folder, "model.safetensors")).keys()
    assert any(key.startswith("language_model.model.") for key in keys)  # llava-hf's published layout
    tokenizer, model, _, _ = load_pretrained_model(folder)
    assert torch.equal(logits(model, tokenizer), logits(plain_llava, llava_tokenizer))


def test_attaching_a_block_at_load_keeps_the_logits(plain_llava, llava_tokenizer, tmp_path):
    folder = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "hf"))
    tokenizer, model, _, _ = load_pretrained_model(folder, post_decoder="transformer_block")
    assert model.post_decoder.config.variant == "transformer_block"
    assert (logits(model, tokenizer) - logits(plain_llava, llava_tokenizer)).abs().max() <= 1e-6


def test_saved_model_with_a_trained_block_round_trips_exactly(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "post_interaction", perturb=0.2, num_layers=2)
    from post_decoder.families.llava.image_processing import load_image_processor

    folder = str(tmp_path / "saved")
    processor_folder = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "hf"))
    save_model_folder(model, llava_tokenizer, load_image_processor(processor_folder), folder)
    expected = logits(model, llava_tokenizer)

    tokenizer, loaded, _, _ = load_pretrained_model(folder)
    assert loaded.post_decoder.config.num_layers == 2
    assert torch.equal(logits(loaded, tokenizer), expected)
    auto_loaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(auto_loaded, LlavaPostDecoderForConditionalGeneration)
    assert torch.equal(logits(auto_loaded.eval(), tokenizer), expected)


def test_a_block_saved_alone_loads_onto_its_base(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "align_linear", perturb=0.2)
    base = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "base"))
    save_post_decoder(model.post_decoder, str(tmp_path / "block"))
    assert sorted(os.listdir(tmp_path / "block")) == ["post_decoder.safetensors", "post_decoder_config.json"]
    tokenizer, loaded, _, _ = load_pretrained_model(str(tmp_path / "block"), model_base=base)
    assert torch.equal(logits(loaded, tokenizer), logits(model, llava_tokenizer))
    with pytest.raises(ValueError, match="pass the base it was trained on as model_base"):
        load_pretrained_model(str(tmp_path / "block"))


def corrupt_block_file(folder, edit):
    path = os.path.join(folder, "post_decoder.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_a_block_of_the_wrong_shape_or_with_missing_keys_is_an_error(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "post_interaction", perturb=0.2)
    base = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "base"))

    save_post_decoder(model.post_decoder, str(tmp_path / "missing"))
    corrupt_block_file(str(tmp_path / "missing"), lambda state: state.pop("layers.0.cross_attn.o_proj.weight"))
    with pytest.raises(ValueError, match=r"missing \(1\):\n    layers.0.cross_attn.o_proj.weight"):
        load_pretrained_model(str(tmp_path / "missing"), model_base=base)

    save_post_decoder(model.post_decoder, str(tmp_path / "shape"))
    corrupt_block_file(str(tmp_path / "shape"), lambda state: state.update({"align.linear_1.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"mis-shaped \(1\):\n    align.linear_1.bias: checkpoint \(3,\)"):
        load_pretrained_model(str(tmp_path / "shape"), model_base=base)

    save_post_decoder(model.post_decoder, str(tmp_path / "extra"))
    corrupt_block_file(
        str(tmp_path / "extra"), lambda state: state.update({"layers.1.mlp.up_proj.weight": torch.zeros(1)})
    )
    with pytest.raises(ValueError, match=r"unexpected \(1\):\n    layers.1.mlp.up_proj.weight"):
        load_pretrained_model(str(tmp_path / "extra"), model_base=base)


def test_torn_block_weights_are_named(plain_llava, llava_tokenizer, tmp_path):
    from post_decoder.errors import InputError

    model = with_block(plain_llava, "post_interaction", perturb=0.2)
    base = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "base"))
    save_post_decoder(model.post_decoder, str(tmp_path / "block"))
    path = tmp_path / "block" / "post_decoder.safetensors"
    os.truncate(path, os.path.getsize(path) - 10)
    with pytest.raises(InputError, match=rf"^{path} cannot be read as safetensors \(.*\): it is truncated or damaged"):
        load_pretrained_model(str(tmp_path / "block"), model_base=base)


def test_a_full_folder_missing_block_weights_is_an_error(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "post_interaction", perturb=0.2)
    model.save_pretrained(tmp_path)
    llava_tokenizer.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    state = {name: tensor for name, tensor in state.items() if not name.startswith("post_decoder.align.")}
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \(4\):\n    post_decoder.align.linear_1.bias"):
        load_pretrained_model(str(tmp_path))


def test_an_original_checkpoint_without_its_projector_is_an_error(original_folder, tmp_path):
    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(original_folder, broken)
    index_path = os.path.join(broken, "pytorch_model.bin.index.json")
    with open(index_path) as handle:
        index = json.load(handle)
    for shard in set(index["weight_map"].values()):
        state = torch.load(os.path.join(broken, shard), weights_only=True)
        torch.save({k: v for k, v in state.items() if "mm_projector.2" not in k}, os.path.join(broken, shard))
    with pytest.raises(ValueError, match=r"missing \(2\):\n    model.multi_modal_projector.linear_2.bias"):
        load_pretrained_model(broken)


def test_conflicting_requests_are_refused(plain_llava, llava_tokenizer, tmp_path):
    model = with_block(plain_llava, "post_interaction")
    model.save_pretrained(tmp_path / "with_block")
    llava_tokenizer.save_pretrained(tmp_path / "with_block")
    base = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "base"))
    with pytest.raises(ValueError, match="already holds a block"):
        load_pretrained_model(str(tmp_path / "with_block"), post_decoder="post_interaction")
    with pytest.raises(ValueError, match="model_base is for a folder that holds only a block"):
        load_pretrained_model(base, model_base=base)
    with pytest.raises(NotImplementedError, match="8-bit and 4-bit"):
        load_pretrained_model(base, load_4bit=True)


def test_a_converted_folder_is_never_written_over(original_folder, converted_folder):
    with pytest.raises(SystemExit):
        convert_main(["--model-path", original_folder, "--out", converted_folder])


def test_a_config_that_is_not_llava_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    # The message names every registered family ("a LLaVA-1.5 or ... checkpoint"); LLaVA's is one of them.
    with pytest.raises(
        ValueError, match=r"is not a (.* or )?LLaVA-1\.5( or .*)? checkpoint: config.json has model_type 'bert'"
    ):
        load_pretrained_model(str(tmp_path))


def test_variant_names_and_configs_both_attach(plain_llava, llava_tokenizer, tmp_path):
    base = save_llava_hf(plain_llava, llava_tokenizer, str(tmp_path / "base"))
    _, by_name, _, _ = load_pretrained_model(base, post_decoder="no_cross_attn")
    _, by_config, _, _ = load_pretrained_model(
        base, post_decoder=PostDecoderConfig(num_layers=2, intermediate_size=40)
    )
    assert by_name.post_decoder.config.variant == "no_cross_attn"
    assert by_config.post_decoder.config.intermediate_size == 40


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("mm_projector_type", "linear", "mm_projector_type='linear'"),
        ("image_aspect_ratio", "anyres", "image_aspect_ratio='anyres'"),
        ("mm_use_im_start_end", True, "mm_use_im_start_end=True are not supported"),
        ("mm_vision_select_feature", "cls", "unsupported mm_vision_select_feature 'cls'"),
    ],
)
def test_unsupported_original_llava_options_are_named(original_folder, tmp_path, option, value, message):
    import shutil

    broken = str(tmp_path / "broken")
    shutil.copytree(original_folder, broken)
    config_path = os.path.join(broken, "config.json")
    with open(config_path) as handle:
        config = json.load(handle)
    config[option] = value
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(broken)
