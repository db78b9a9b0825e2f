"""The demo page on every family's tiny model with a block (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InstructBLIP,
MiniGPT-4): served on 127.0.0.1 and asked through gradio_client, its two columns answer as the plain model's and
the trained model's own greedy `generate` do; the heat map lies on each image's own grid."""

import contextlib
import io

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from transformers import GenerationConfig, InstructBlipForConditionalGeneration

from demo import app as demo_app
from demo.chat import fit_prompt, image_inputs_of, model_inputs
from demo.heatmap import answer_attention
from demo.loading import LoadedModel, load_model
from demo.page import Page
from post_decoder.builder import load_pretrained_model
from post_decoder.families.instructblip.tiny import make_tiny_hub_folder
from post_decoder.families.minigpt4.image_processing import minigpt4_image_processor
from post_decoder.families.minigpt4.tiny import (
    make_tiny_minigpt4,
    tiny_minigpt4_tokenizer,
    train_tiny_minigpt4_tokenizer,
    with_block,
)
from post_decoder.family import family_for
from post_decoder.saving import save_model_folder
from tests.helpers import add_noise, free_port
from tests.helpers.qwen_vl import VERSIONS, TinyQwen, ours, picture

FAMILIES = (*VERSIONS, "instructblip", "minigpt4")
MAX_NEW_TOKENS = 6
QUESTION = "Is there a dog in the image?"


def qwen_world(version, root):
    tiny = TinyQwen(version, root)
    folder = str(root / "trained")
    save_model_folder(ours(tiny.plain, "post_interaction", perturb=0.3), tiny.tokenizer, tiny.processor, folder)
    # transformers' own Qwen-VL model, which finds its M-RoPE positions from `mm_token_type_ids`
    return folder, tiny.plain, lambda ids: {"mm_token_type_ids": (ids == tiny.plain.config.image_token_id).int()}


def instructblip_world(root):
    hub = make_tiny_hub_folder(str(root / "hub"))
    tokenizer, model, processor, _ = load_pretrained_model(hub, device="cpu", post_decoder="post_interaction")
    add_noise(model.post_decoder, 0.3)
    folder = str(root / "trained")
    save_model_folder(model, tokenizer, processor, folder)
    return folder, InstructBlipForConditionalGeneration.from_pretrained(hub).eval(), lambda ids: {}


def minigpt4_world(root):
    """The Llama-2 version (no Q-Former): the block reads the ViT's patches, so the heat map has a grid."""
    train_tiny_minigpt4_tokenizer(str(root / "tokenizer"))
    tokenizer = tiny_minigpt4_tokenizer(str(root / "tokenizer"))
    plain = make_tiny_minigpt4(len(tokenizer) - 2)
    folder = str(root / "trained")
    trained = with_block(plain, "post_interaction", perturb=0.3)
    save_model_folder(trained, tokenizer, minigpt4_image_processor(32), folder)
    # The tiny model's vocabulary rows past the tokenizer's (padding to 64) have random logits and no text: its
    # generation config keeps them out (a real checkpoint has no such rows), in the folder the page loads too.
    generation = GenerationConfig.from_pretrained(folder)
    generation.suppress_tokens = list(range(len(tokenizer), plain.config.text_config.vocab_size))
    generation.save_pretrained(folder)
    plain.generation_config = generation
    return folder, plain, lambda ids: {}


@pytest.fixture(scope="module", params=FAMILIES)
def world(request, tmp_path_factory):
    """(family name, the trained model's folder, the plain model, its extra generate inputs, the page's url)."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param in VERSIONS:
        folder, plain, plain_extra = qwen_world(request.param, root)
    elif request.param == "instructblip":
        folder, plain, plain_extra = instructblip_world(root)
    else:
        folder, plain, plain_extra = minigpt4_world(root)
    port = free_port()
    args = demo_app.parse_args(
        ["--model-path", folder, "--port", str(port), "--max-new-tokens", str(MAX_NEW_TOKENS), "--device", "cpu"]
    )
    blocks, launch = demo_app.create_app(args)
    with contextlib.redirect_stdout(io.StringIO()):
        demo_app.start(blocks, launch, wait=False)
    try:
        yield request.param, folder, plain, plain_extra, f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


def greedy_answer(model, extra, tokenizer, processor, image, question, turns=()):
    """Plain `generate` on the family's prompt (the one-question prompt, or a conversation after `turns`), built
    here from the family's own calls."""
    family = family_for(model)
    image_inputs = family.image_inputs([image], processor)
    counts = family.image_token_counts(model.config, image_inputs)
    prompt = family.question_prompt(question)
    if turns:
        conversation = family.conversation(family.default_conv_mode_for(model.config))
        for index, (asked, answered) in enumerate(turns):
            conversation.add_user(asked, with_image=index == 0).add_assistant(answered)
        prompt = conversation.add_user(question).add_assistant(None).prompt()
    ids = torch.tensor([family.tokenize_prompt(prompt, tokenizer, model.config, image_tokens=counts)])
    if "qformer_tokenizer" in dir(processor):  # InstructBLIP's Q-Former reads the question: transformers' own tokens
        theirs = processor(images=[image], text=[question], return_tensors="pt")
        image_inputs.update({name: theirs[name] for name in ("qformer_input_ids", "qformer_attention_mask")})
    with torch.no_grad():
        output = model.generate(
            input_ids=ids, **image_inputs, **extra(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    answer_ids = output[0, ids.shape[1] :].tolist()
    return tokenizer.decode(answer_ids, skip_special_tokens=True).strip(), answer_ids


def texts(messages):
    return [(message["role"], "".join(part["text"] for part in message["content"])) for message in messages]


def test_the_page_answers_with_every_family(world, tmp_path):
    name, folder, plain, plain_extra, url = world
    image_file = tmp_path / "picture.png"
    picture(40, 24, seed=4).save(image_file)
    client = Client(url, verbose=False)
    base_chat, trained_chat, heat, caption, choice, note, *_ = client.predict(
        handle_file(str(image_file)), QUESTION, "greedy", 0.7, MAX_NEW_TOKENS, api_name="/answer"
    )
    tokenizer, trained, processor, _ = load_pretrained_model(folder, device="cpu")
    image = Image.open(image_file)
    expected_base, _ = greedy_answer(plain, plain_extra, tokenizer, processor, image, QUESTION)
    expected_trained, trained_ids = greedy_answer(trained, lambda ids: {}, tokenizer, processor, image, QUESTION)
    assert expected_base and expected_trained and expected_base != expected_trained, name
    assert texts(base_chat) == [("user", QUESTION), ("assistant", expected_base)]
    assert texts(trained_chat) == [("user", QUESTION), ("assistant", expected_trained)]
    assert note == ""
    # The heat map: the block's attention over the grid the family names for this image.
    (grid,) = family_for(trained).vision_grid(
        trained.config, family_for(trained).image_inputs([image], processor), trained.post_decoder.config.vision_source
    )
    assert caption.startswith("Averaged over the answer") and f"{grid[0]}x{grid[1]} patches" in caption
    assert Image.open(heat).size[0] / Image.open(heat).size[1] == pytest.approx(grid[1] / grid[0], rel=0.02)
    assert [int(label.rsplit("(id ", 1)[1].rstrip(")")) for label, _ in choice["choices"][1:]] == trained_ids

    # A follow-up continues each model's chat in its template; InstructBLIP's holds one question, sent alone.
    follow_up = "What color is it?"
    _, trained_chat, _, _, _, note, *_ = client.predict(
        handle_file(str(image_file)), follow_up, "greedy", 0.7, MAX_NEW_TOKENS, api_name="/answer"
    )
    one_question = name == "instructblip"
    turns = () if one_question else [(QUESTION, expected_trained)]
    expected, _ = greedy_answer(trained, lambda ids: {}, tokenizer, processor, image, follow_up, turns)
    assert texts(trained_chat) == [*(("user", QUESTION), ("assistant", expected_trained))[: 0 if one_question else 2],
                                   ("user", follow_up), ("assistant", expected)]  # fmt: skip
    assert ("this model's prompt holds one question" in note) == one_question


# (width, height) -> its 4-pixel patches (rows, columns), and the heat map's size (the longer side 336 pixels)
QWEN_SIZES = [((40, 24), (6, 10), (336, 202)), ((24, 48), (12, 6), (168, 336))]


@pytest.mark.parametrize("world", ["qwen2_5_vl"], indirect=True)
def test_pixel_bounds_reach_the_qwen_image_processor(world):
    _, folder, *_ = world
    args = demo_app.parse_args(["--model-path", folder, "--max-pixels", str(24 * 24), "--device", "cpu"])
    trained, base = demo_app.load_page_models(args, folder, None, None)
    assert trained.image_processor.size["longest_edge"] == 24 * 24 and base.image_processor is trained.image_processor
    image_inputs, counts = image_inputs_of(trained, picture(40, 24, seed=4))
    assert image_inputs["image_grid_thw"].tolist() == [[1, 4, 6]] and counts == [6]  # 6 x 10 patches without it


@pytest.mark.parametrize("world", ["qwen2_5_vl"], indirect=True)
def test_the_qwen_heat_map_has_each_images_own_grid(world, tmp_path):
    *_, url = world
    client = Client(url, verbose=False)
    for (width, height), (rows, columns), heat_size in QWEN_SIZES:
        image_file = tmp_path / f"{width}x{height}.png"
        picture(width, height, seed=4).save(image_file)
        _, _, heat, caption, *_ = client.predict(
            handle_file(str(image_file)), QUESTION, "greedy", 0.7, MAX_NEW_TOKENS, api_name="/answer"
        )
        assert f"{rows}x{columns} patches" in caption
        assert Image.open(heat).size == heat_size


def documented_patch_row(row: int, column: int, columns: int, merge: int = 2) -> int:
    """Qwen-VL's pre-merger row of patch (row, column), as family.vision_grid's docstring states it: merged token
    by merged token in raster order, each one's merge x merge patches in raster order."""
    return (
        ((row // merge) * (columns // merge) + column // merge) * merge * merge
        + (row % merge) * merge
        + column % merge
    )


@pytest.mark.parametrize("world", ["qwen2_5_vl"], indirect=True)
def test_the_qwen_heat_map_puts_each_pre_merger_row_on_its_own_patch(world):
    _, folder, *_ = world
    loaded = load_model(folder, None, "trained", "cpu", None)
    answer = loaded.tokenizer("a red box", add_special_tokens=False).input_ids  # ordinary tokens: no image token
    for (width, height), (rows, columns), _ in QWEN_SIZES:
        image_inputs, counts = image_inputs_of(loaded, picture(width, height, seed=4))
        assert image_inputs["image_grid_thw"].tolist() == [[1, rows, columns]] and counts == [rows * columns // 4]
        prompt = fit_prompt(loaded, [], QUESTION, MAX_NEW_TOKENS, counts).ids
        inputs = model_inputs(loaded, image_inputs, QUESTION)
        drawn = answer_attention(loaded, prompt, answer, inputs)
        with torch.no_grad():
            output = loaded.model(
                input_ids=torch.tensor([prompt + answer[:-1]]), **inputs, output_post_decoder_attentions=True
            )
        block_rows = torch.stack(output.post_decoder_attentions).mean(dim=(0, 2))[0, -len(answer) :]  # [3, N]
        assert block_rows.shape[-1] == rows * columns  # one row per patch, no CLS
        expected = np.array(
            [[[block_rows[t, documented_patch_row(r, c, columns)] for c in range(columns)] for r in range(rows)]
             for t in range(len(answer))]
        )  # fmt: skip
        np.testing.assert_allclose(drawn, expected, atol=1e-6)


def test_a_block_on_query_outputs_says_there_is_no_heat_map(tmp_path):
    """The Vicuna MiniGPT-4's projector rows are its Q-Former's 32 query outputs: no place on the image."""
    train_tiny_minigpt4_tokenizer(str(tmp_path / "tokenizer"))
    tokenizer = tiny_minigpt4_tokenizer(str(tmp_path / "tokenizer"))
    plain = make_tiny_minigpt4(len(tokenizer) - 2, has_qformer=True)
    model = with_block(plain, "post_interaction", perturb=0.3, vision_source="projector")
    model.generation_config.suppress_tokens = list(range(len(tokenizer), model.config.text_config.vocab_size))
    loaded = LoadedModel("trained", tokenizer, model, minigpt4_image_processor(32), 1024)
    image_file = tmp_path / "picture.png"
    picture(40, 24, seed=4).save(image_file)
    updates = list(Page(loaded, None).answer(str(image_file), QUESTION, "greedy", 0.7, 4, None))
    _, trained_chat, heat, caption, *_ = updates[-1]
    assert heat is None and trained_chat[-1]["role"] == "assistant"
    assert caption.startswith("No heat map: the block reads the image's projector features, which have no place")
