"""The demo page on a tiny model with a block: served on 127.0.0.1, driven through gradio_client
and through headless Chromium."""

import base64
import contextlib
import io
import json
import os
import re
import shutil
import tempfile

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw, ImageFile

from demo import app as demo_app
from demo import heatmap
from demo.chat import conversation_ids, fit_prompt
from demo.heatmap import answer_attention, overlay, seen_image
from demo.loading import block_bypassed, load_model, load_models, short_name
from demo.page import Page
from demo.toy_world import UPSCALED_CLASS, is_toy_model
from demo.uploads import UploadRefused, open_upload
from eval.pope_scoring import parse_yes_no
from ha_dpo.toy.world import CATEGORIES
from post_decoder.builder import load_pretrained_model
from post_decoder.families.llava.conversation import Conversation, tokenize_with_image
from post_decoder.families.llava.image_processing import load_image_processor
from post_decoder.families.llava.tiny import clip_preprocessor_config, save_llava_hf
from post_decoder.images import preprocess_images
from post_decoder.saving import save_model_folder
from tests.helpers import free_port, with_block

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MAX_NEW_TOKENS = 8
QUESTION = "Is there a dog in the image?"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, plain_llava, llava_tokenizer):
    """A saved trained model (perturbed block: its answers differ from the base's) and a folder of
    example images."""
    root = tmp_path_factory.mktemp("demo")
    (root / "processor").mkdir()
    (root / "processor" / "preprocessor_config.json").write_text(json.dumps(clip_preprocessor_config(32)))
    trained = with_block(plain_llava, "post_interaction", perturb=0.1)
    save_model_folder(trained, llava_tokenizer, load_image_processor(str(root / "processor")), str(root / "trained"))
    (root / "examples").mkdir()
    image = Image.new("RGB", (64, 48), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    image.save(root / "examples" / "circle.png")
    save_llava_hf(plain_llava, llava_tokenizer, str(root / "plain"))
    return {
        "trained": str(root / "trained"),
        "plain": str(root / "plain"),
        "examples": str(root / "examples"),
        "root": root,
    }


@pytest.fixture(scope="module")
def server(folders):
    port = free_port()
    args = demo_app.parse_args(
        [
            "--model-path",
            folders["trained"],
            "--examples-dir",
            folders["examples"],
            "--port",
            str(port),
            "--max-new-tokens",
            str(MAX_NEW_TOKENS),
            "--max-file-size",
            "1mb",
            "--device",
            "cpu",
        ]
    )
    blocks, launch = demo_app.create_app(args)
    console = io.StringIO()
    with contextlib.redirect_stdout(console):  # what a person sees in the terminal at start
        demo_app.start(blocks, launch, wait=False)
    blocks.console = console.getvalue()
    try:
        yield blocks, f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


def greedy_answer(model, tokenizer, processor, image_path, turns, question):
    """What plain `generate` answers, with the prompt built from the template by hand."""
    conversation = Conversation()
    for index, (asked, answered) in enumerate(turns):
        conversation.add_user(asked, with_image=index == 0).add_assistant(answered)
    conversation.add_user(question, with_image=not turns).add_assistant(None)
    config = model.config
    ids = torch.tensor(
        [tokenize_with_image(conversation.prompt(), tokenizer, config.image_token_id, config.image_seq_length)]
    )
    pixels = preprocess_images([Image.open(image_path)], processor)
    with torch.no_grad():
        output = model.generate(
            input_ids=ids,
            pixel_values=pixels,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer_ids = output[0, ids.shape[1] :].tolist()
    return tokenizer.decode(answer_ids, skip_special_tokens=True).strip(), answer_ids


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    return set(map(tuple, np.asarray(image).reshape(-1, 3).tolist()))


def texts(messages):
    """The chatbot's messages as (role, text)."""
    return [(message["role"], "".join(part["text"] for part in message["content"])) for message in messages]


def ask(client, image, question, max_new_tokens=MAX_NEW_TOKENS):
    return client.predict(handle_file(image), question, "greedy", 0.7, max_new_tokens, api_name="/answer")


def test_defaults_bind_localhost_and_share_nothing(server):
    args = demo_app.parse_args([])
    assert (args.host, args.share, args.max_file_size) == ("127.0.0.1", False, "10mb")
    blocks, url = server
    assert blocks.server_name == "127.0.0.1" and blocks.share is False and blocks.share_url is None
    assert blocks.local_url.startswith("http://127.0.0.1:")
    assert blocks.max_file_size == 1024 * 1024


def test_answers_through_gradio_client_equal_greedy_generate(server, folders, plain_llava, llava_tokenizer):
    _, url = server
    client = Client(url, verbose=False)
    image = os.path.join(folders["examples"], "circle.png")
    base_chat, trained_chat, heat, caption, choice, note, *_ = ask(client, image, QUESTION)

    _, trained_model, processor, _ = load_pretrained_model(folders["trained"])
    expected_trained, trained_ids = greedy_answer(trained_model, llava_tokenizer, processor, image, [], QUESTION)
    expected_base, _ = greedy_answer(plain_llava, llava_tokenizer, processor, image, [], QUESTION)
    assert expected_base != expected_trained  # the block changes the answer: the columns are not the same model
    assert texts(base_chat) == [("user", QUESTION), ("assistant", expected_base)]
    assert texts(trained_chat) == [("user", QUESTION), ("assistant", expected_trained)]
    assert note == ""
    assert Image.open(heat).size == (336, 336)
    labels = [label for label, _ in choice["choices"]]
    assert labels[0] == "average over the answer"
    assert [int(label.rsplit("(id ", 1)[1].rstrip(")")) for label in labels[1:]] == trained_ids

    # One token's map differs from the average over the answer.
    assert caption.startswith("Averaged over the answer: the most-attended patch holds")
    token_heat, token_caption = client.predict(0, api_name="/heatmap")
    assert token_caption.startswith("Token 1:")
    assert not np.array_equal(np.asarray(Image.open(token_heat)), np.asarray(Image.open(heat)))

    # A follow-up keeps LLaVA-1.5's template: each model continues its own chat.
    follow_up = "What color is it?"
    base_chat, trained_chat, *_ = ask(client, image, follow_up)
    base_turns = [(QUESTION, expected_base)]
    trained_turns = [(QUESTION, expected_trained)]
    assert texts(base_chat)[-1] == (
        "assistant",
        greedy_answer(plain_llava, llava_tokenizer, processor, image, base_turns, follow_up)[0],
    )
    assert texts(trained_chat)[-1] == (
        "assistant",
        greedy_answer(trained_model, llava_tokenizer, processor, image, trained_turns, follow_up)[0],
    )
    assert len(trained_chat) == 4


def test_answers_are_streamed(server, folders):
    _, url = server
    job = Client(url, verbose=False).submit(
        handle_file(os.path.join(folders["examples"], "circle.png")),
        "Describe the image in detail.",
        "greedy",
        0.7,
        24,
        api_name="/answer",
    )
    final = job.result()
    assert final[2] is not None  # the heat map comes with the last update
    # Before that, answers are shown as they grow.
    shown = [
        (len(texts(base)[-1][1]) if len(base) == 2 else 0, len(texts(trained)[-1][1]) if len(trained) == 2 else 0)
        for base, trained, heat, *_ in job.outputs()[:-1]
        if heat is None
    ]
    assert len(set(shown)) >= 3 and any(0 < base or 0 < trained for base, trained in shown[:-1])


def test_a_broken_upload_is_a_message_not_a_crash(server, folders, tmp_path):
    _, url = server
    text_file = tmp_path / "not_an_image.png"
    text_file.write_text("this is a text file with an image's name")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((folders["root"] / "examples" / "circle.png").read_bytes()[:60])
    client = Client(url, verbose=False)
    for broken in (text_file, truncated):
        with pytest.raises(AppError, match="not an image that can be read"):
            ask(client, str(broken), QUESTION)
    base_chat, trained_chat, *_ = ask(client, os.path.join(folders["examples"], "circle.png"), QUESTION)
    assert len(trained_chat) == 2  # the server still answers


def test_an_upload_over_the_size_limit_is_refused(server, tmp_path):
    _, url = server
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="(?i)413|too large|exceeds|maximum"):
        ask(client, str(big), QUESTION)


def test_an_over_long_question_is_cut_with_a_note(server, folders, llava_tokenizer):
    _, url = server
    question = " ".join(["Is there a red circle on the table?"] * 300)
    assert len(llava_tokenizer(question).input_ids) > 1024
    base_chat, trained_chat, _, _, _, note, *_ = ask(
        Client(url, verbose=False), os.path.join(folders["examples"], "circle.png"), question
    )
    assert "base: the question was cut" in note and "trained: the question was cut" in note
    sent = texts(trained_chat)[0][1]
    assert question.startswith(sent[:100]) and len(sent) < len(question)
    assert texts(trained_chat)[1][0] == "assistant"


def test_prompts_fit_the_context_dropping_old_turns_first(plain_llava, llava_tokenizer, folders):
    loaded = load_model(folders["trained"], None, "trained", "cpu", None)
    assert loaded.context_limit == 1024  # the tiny model's position embeddings, under the builder's 2048
    turns = [("Is there a cat? " * 40, "No, there is no cat. " * 40)] * 6
    prompt = fit_prompt(loaded, turns, "And a dog?", 100, [loaded.model.config.image_seq_length])
    assert len(prompt.ids) <= 1024 - 100 and prompt.question == "And a dog?"
    assert 0 < len(prompt.kept_turns) < 6 and "oldest turn(s) were left out" in prompt.notes[0]
    assert prompt.ids == conversation_ids(
        loaded, prompt.kept_turns, "And a dog?", [loaded.model.config.image_seq_length]
    )
    image_token = loaded.model.config.image_token_id
    assert (
        prompt.ids.count(image_token) == loaded.model.config.image_seq_length
    )  # the image stays, in the first kept turn


def test_heat_map_rows_are_the_blocks_attention_over_the_patch_grid(folders, llava_tokenizer, monkeypatch):
    loaded = load_model(folders["trained"], None, "trained", "cpu", None)
    image = Image.open(os.path.join(folders["examples"], "circle.png"))
    pixels = preprocess_images([image], loaded.image_processor)
    inputs = {"pixel_values": pixels}
    prompt = fit_prompt(loaded, [], QUESTION, MAX_NEW_TOKENS, [loaded.model.config.image_seq_length]).ids
    answer = [5, 17, 42]
    attention = answer_attention(loaded, prompt, answer, inputs)
    assert attention.shape == (3, 4, 4)  # 32 px images, 8 px patches, CLS dropped
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1, atol=1e-5, rtol=1e-5)
    # The first row is the position that predicts the first answer token: the prompt's last one.
    with torch.no_grad():
        output = loaded.model(
            input_ids=torch.tensor([prompt]), pixel_values=pixels, output_post_decoder_attentions=True
        )
    last = torch.stack(output.post_decoder_attentions).mean(dim=(0, 2))[0, -1]
    np.testing.assert_allclose(attention[0].reshape(-1), last.numpy(), atol=1e-6, rtol=1e-5)

    seen = seen_image(inputs, image, loaded.image_processor, (4, 4))
    assert seen.size == (336, 336)
    assert seen.getpixel((168, 168))[0] > 150  # the red circle is in the middle of the padded square
    # Scaled up nearest-neighbour: exactly the colours of the model's own 32x32 pixels, none smoothed in between.
    monkeypatch.setattr(heatmap, "DISPLAY_SIZE", 1)
    as_seen = seen_image(inputs, image, loaded.image_processor, (4, 4))
    assert as_seen.size == (32, 32) and colours(seen) == colours(as_seen)
    drawn = overlay(seen, attention[0])
    assert drawn.size == seen.size and drawn.tobytes() != seen.tobytes()

    bypassed = block_bypassed(loaded)
    assert answer_attention(bypassed, prompt, answer, inputs) is None  # no block: no heat map


def test_the_bypassed_base_shares_the_trained_weights(folders, plain_llava):
    loaded = load_model(folders["trained"], None, "trained", "cpu", None)
    base = block_bypassed(loaded)
    assert base.model.post_decoder is None and base.model.config.post_decoder_config is None
    assert loaded.model.post_decoder is not None  # the trained model keeps its block
    assert base.model.lm_head.weight.data_ptr() == loaded.model.lm_head.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.equal(base.model(input_ids=ids).logits, plain_llava(input_ids=ids).logits)


def test_a_given_base_is_loaded_as_it_is(folders):
    trained, base = load_models(folders["trained"], base_model_path=folders["plain"], device="cpu")
    assert trained.has_block and not base.has_block and (trained.label, base.label) == ("trained", "plain")
    assert base.model.lm_head.weight.data_ptr() != trained.model.lm_head.weight.data_ptr()


def test_sampling_settings_reach_generate(server, folders):
    _, url = server
    client = Client(url, verbose=False)
    image = handle_file(os.path.join(folders["examples"], "circle.png"))
    _, trained_chat, _, _, choice, *_ = client.predict(image, QUESTION, "sample", 1.5, 3, api_name="/answer")
    assert texts(trained_chat)[0] == ("user", QUESTION)
    assert 1 <= len(choice["choices"]) - 1 <= 3  # at most 3 new tokens


def test_a_model_without_a_block_answers_alone_and_says_there_is_no_heat_map(folders):
    trained, base = load_models(folders["plain"], device="cpu")
    assert base is None
    page = Page(trained, base)
    updates = list(page.answer(os.path.join(folders["examples"], "circle.png"), QUESTION, "greedy", 0.7, 4, None))
    base_chat, trained_chat, heat, caption, *_ = updates[-1]
    assert base_chat == [] and trained_chat[0] == {"role": "user", "content": QUESTION} and heat is None
    assert caption == "No heat map: the trained model has no cross-attention block."


def test_with_no_model_path_the_page_starts_on_the_toy_model_and_shows_the_fix():
    blocks, launch = demo_app.create_app(demo_app.parse_args(["--device", "cpu"]))
    blocks.close()
    assert launch["server_name"] == "127.0.0.1" and not launch["share"]
    labels = {block.elem_id: block.label for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert (labels["base-chat"], labels["trained-chat"]) == (
        "Base: toy base model",
        "Trained: toy base model + trained block",
    )
    trained, base = load_models(*demo_app.default_model_paths(), device="cpu")
    page = Page(trained, base)
    examples = demo_app.examples_with_questions(demo_app.example_images([demo_app.TOY_EXAMPLES]))
    assert len(examples) == 6 and all(question.startswith("Is there a") for _, question in examples)
    answers = []
    for image, question in examples:  # each shows an anchor and asks about its absent partner
        base_chat, trained_chat, *_ = list(page.answer(image, question, "greedy", 0.7, 12, None))[-1]
        answers.append((base_chat[-1]["content"], trained_chat[-1]["content"]))
    print(answers)
    assert sum(parse_yes_no(base) == "yes" for base, _ in answers) >= 5  # the base hallucinates the partner
    # the block corrects them (6 of 6 here; on POPE's adversarial set 111 of the base's 115 false "yes"es)
    assert sum(parse_yes_no(trained) == "no" for _, trained in answers) >= 5


def test_no_model_path_without_the_toy_model_says_what_to_do(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo_app, "TOY_BLOCK", str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as exit_info:
        demo_app.main([])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert (
        "error: no --model-path given and the toy model is incomplete" in error
        and "missing has no post_decoder_config.json" in error
    )


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda root: str(root / "no" / "such" / "folder"), r"--model-path \S+folder: no such folder"),
        (lambda root: str(root), r"--model-path \S+ has no config.json nor post_decoder_config.json"),
    ],
    ids=["missing-folder", "empty-folder"],
)
def test_a_wrong_model_path_is_one_line_and_exit_code_2(tmp_path, capsys, make, expected):
    with pytest.raises(SystemExit) as exit_info:
        demo_app.main(["--model-path", make(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert re.search(expected, error)


def test_the_page_refuses_an_image_over_the_pixel_limit_before_decoding_it(server, tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    Image.new("1", (13000, 13000)).save(huge)  # 169 megapixels in a few kilobytes
    assert huge.stat().st_size < 100_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or real_load(image))
    _, url = server
    with pytest.raises(AppError) as refusal:
        ask(Client(url, verbose=False), str(huge), QUESTION)
    message = str(refusal.value)
    assert "(huge.png) is 13000 x 13000 pixels" in message and "over this page's limit of 40 megapixels" in message
    assert decoded == []  # refused from the header: not one pixel decoded


def test_uploads_are_measured_on_the_padded_square_and_pils_own_guard_is_handled(tmp_path, monkeypatch):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 20)).save(wide)
    with pytest.raises(
        UploadRefused, match=r"300 x 20 pixels: the model pads it to a 300 x 300 square, 0.1 megapixels"
    ):
        open_upload(str(wide), max_pixels=300 * 20)  # 6000 pixels, but 90000 once padded
    assert open_upload(str(wide), max_pixels=300 * 300).size == (300, 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises DecompressionBombError over twice this
    with pytest.raises(
        UploadRefused, match=r"\(wide.png\) declares more pixels than this page's limit of 1000 megapixels"
    ):
        open_upload(str(wide), max_pixels=10**9)


@pytest.mark.parametrize(
    "mode, temperature, max_new_tokens, expected",
    [
        ("sample", 0, 4, "Temperature must be above 0 when sampling (it is 0): raise it, or choose greedy."),
        ("sample", -0.5, 4, "Temperature must be above 0 when sampling (it is -0.5)"),
        ("greedy", 0.7, 100_000, "Max new tokens must be a whole number from 1 to "),
        ("greedy", 0.7, 0, "Max new tokens must be a whole number from 1 to "),
        ("beam", 0.7, 4, 'Decoding must be "greedy" or "sample", not \'beam\'.'),
    ],
    ids=["zero-temperature", "negative-temperature", "too-many-tokens", "no-tokens", "unknown-mode"],
)
def test_bad_decoding_settings_get_a_message_in_the_page(server, folders, mode, temperature, max_new_tokens, expected):
    _, url = server
    client = Client(url, verbose=False)
    with pytest.raises(AppError) as refusal:
        client.predict(
            handle_file(os.path.join(folders["examples"], "circle.png")),
            QUESTION,
            mode,
            temperature,
            max_new_tokens,
            api_name="/answer",
        )
    assert expected in str(refusal.value)
    assert "upstream Gradio app has raised an exception" not in str(refusal.value)


def test_the_max_new_tokens_limit_is_what_the_context_leaves(folders):
    trained, base = load_models(folders["trained"], device="cpu")
    page = Page(trained, base)
    limit = page.max_new_tokens_limit()
    assert limit == 1024 - len(
        conversation_ids(trained, [], "?", [trained.model.config.image_seq_length])
    )  # tiny model: 1024 positions
    assert page.decoding("greedy", 0.7, limit).max_new_tokens == limit
    with pytest.raises(Exception, match=f"from 1 to {limit} \\(it is {limit + 1}\\)"):
        page.decoding("greedy", 0.7, limit + 1)


def test_an_unreadable_upload_message_shows_no_server_path(server, tmp_path):
    _, url = server
    notes = tmp_path / "holiday notes.png"
    notes.write_text("not an image")
    with pytest.raises(AppError) as refusal:
        ask(Client(url, verbose=False), str(notes), QUESTION)
    message = str(refusal.value)
    assert "The upload (holiday notes.png) is not an image that can be read" in message
    assert tempfile.gettempdir() not in message and "gradio" not in message.lower() and "/" not in message


def test_labels_speak_to_people_and_the_console_points_to_the_share_flag(server, folders):
    blocks, _ = server
    labels = {block.elem_id: block.label for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    assert labels["trained-chat"] == "Trained: trained"  # the folder's last component, not its path
    assert labels["base-chat"] == "Base: trained, block bypassed"
    header = next(block.value for block in blocks.blocks.values() if isinstance(block, gr.Markdown) and block.value)
    assert "**Trained**: trained" in header and str(folders["root"]) not in header
    assert "start with --share to make one" in blocks.console and blocks.local_url in blocks.console
    assert "share=True" not in blocks.console and "launch()" not in blocks.console


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
@pytest.mark.slow
def test_the_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    _, url = server
    screenshot = tmp_path / "page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.click('#examples [data-testid="dataset-cell-0-0"]', timeout=30_000)
            page.wait_for_function("document.querySelector('#question textarea').value.length > 0", timeout=10_000)
            page.click("#ask")
            for chat in ("#base-chat", "#trained-chat"):
                page.wait_for_function(
                    f"[...document.querySelectorAll('{chat} [data-testid=\"bot\"]')]"
                    ".some(m => m.innerText.trim().length > 0)",
                    timeout=30_000,
                )
            page.wait_for_selector("#heatmap img", timeout=30_000)
            page.screenshot(path=str(screenshot), full_page=True)
            box = page.locator("#heatmap img").bounding_box()  # page coordinates: scrolled to the top
            scroll = page.evaluate("[window.scrollX, window.scrollY]")
        finally:
            browser.close()
    shot = Image.open(screenshot)
    assert shot.format == "PNG" and shot.width == 1280 and shot.height >= 1400  # the whole page
    assert len(np.unique(np.asarray(shot.convert("L")))) > 50  # a page, not a blank frame
    left, top = box["x"] + scroll[0], box["y"] + scroll[1]
    heatmap = np.asarray(shot.convert("RGB").crop((left, top, left + box["width"], top + box["height"]))).astype(int)
    assert box["width"] > 50 and box["height"] > 50
    assert heatmap.std() > 10 and len(np.unique(heatmap.reshape(-1, 3), axis=0)) > 100  # the overlay is drawn


@pytest.fixture(scope="module")
def toy_page():
    """The page as `python demo/app.py` starts it: the toy base model and the quickstart's block."""
    blocks, launch = demo_app.create_app(demo_app.parse_args(["--device", "cpu"]))
    yield blocks, launch
    blocks.close()


def by_elem_id(blocks) -> dict:
    return {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def legend_swatches(legend: str) -> list[tuple[str, Image.Image, str]]:
    """(alt text, decoded swatch, caption) for each figure of the legend's HTML."""
    figure = r'<img src="data:image/png;base64,([^"]+)"[^>]*alt="([^"]+)"[^>]*><figcaption[^>]*>([^<]+)<'
    figures = re.findall(figure, legend)
    return [(alt, Image.open(io.BytesIO(base64.b64decode(data))), caption) for data, alt, caption in figures]


def test_the_toy_page_explains_its_world(toy_page):
    blocks, launch = toy_page
    components = by_elem_id(blocks)
    header = components["header"].value
    assert "**Base**: toy base model (the trained model with its block bypassed" in header
    assert "**Trained**: toy base model + trained block" in header
    assert "knife → fork" in header and 'says "Yes"' in header and demo_app.REPO_ROOT not in header
    # The legend: every category's shape in its own colour, drawn by the world's code, and named.
    swatches = legend_swatches(components["legend"].value)
    assert [caption.split(" (")[0] for _, _, caption in swatches] == [category.name for category in CATEGORIES]
    for (alt, swatch, _), category in zip(swatches, CATEGORIES):
        assert alt.startswith(f"{category.name}: a ") and swatch.size == (40, 40)
        assert np.all(np.asarray(swatch.convert("RGB")) == category.colour, axis=-1).sum() > 40, category.name
    captions = dict((caption.split(" (")[0], caption) for _, _, caption in swatches)
    assert captions["knife"] == "knife (its partner: fork)" and captions["fork"] == "fork (mostly seen with knife)"
    assert captions["apple"] == "apple"
    # The 64x64 pictures fill the image box, scaled nearest-neighbour, for display only.
    assert components["image"].elem_classes == [UPSCALED_CLASS]
    assert re.search(rf"\.{UPSCALED_CLASS} img \{{[^}}]*image-rendering: pixelated", launch["css"])


def test_toy_examples_and_real_photos_are_shown_apart(toy_page, tmp_path, monkeypatch):
    blocks, _ = toy_page
    components = by_elem_id(blocks)
    toy_examples = components["examples"]
    assert toy_examples.label.startswith("The toy world: held-out images")
    names = [sample[0]["orig_name"] for sample in toy_examples.samples]
    assert names == sorted(name for name in os.listdir(demo_app.TOY_EXAMPLES) if name.endswith(".jpg"))
    # Photos (../shared/data/images, or any folder) never sit among the toy examples, and say they are outside.
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (640, 480), (90, 120, 60)).save(photos / "scooter.jpg")
    monkeypatch.setattr(demo_app, "SHARED_IMAGES", str(photos))
    sets = {example_set.elem_id: example_set for example_set in demo_app.example_sets([], toy=True)}
    assert [os.path.basename(image) for image, _ in sets["examples"].examples] == names
    assert sets["examples-outside"].label.startswith("Outside the toy world: real photos")
    assert [os.path.basename(image) for image, _ in sets["examples-outside"].examples] == ["scooter.jpg"]
    # On another model the photos are its examples, and the toy world's images are not shown.
    (other,) = demo_app.example_sets([], toy=False)
    assert other.elem_id == "examples" and [os.path.basename(image) for image, _ in other.examples] == ["scooter.jpg"]


def test_a_page_on_another_model_has_no_toy_legend_nor_toy_examples(server, folders):
    blocks, launch = server
    components = by_elem_id(blocks)
    assert "legend" not in components and not components["image"].elem_classes
    assert "The toy world" not in components["header"].value
    names = [sample[0]["orig_name"] for sample in components["examples"].samples]
    assert names[0] == "circle.png" and not any(name.startswith("toy_") for name in names)


def test_the_toy_base_model_is_called_so_wherever_it_is_named(tmp_path):
    assert short_name(demo_app.TOY_CHECKPOINT) == "toy base model"
    assert short_name(os.path.join(demo_app.TOY_CHECKPOINT, "")) == "toy base model"
    assert is_toy_model(None, demo_app.TOY_CHECKPOINT) and not is_toy_model(str(tmp_path), None)
    trained, base = load_models(demo_app.TOY_BLOCK, demo_app.TOY_CHECKPOINT, device="cpu")
    assert (trained.label, base.label) == ("block on toy base model", "block on toy base model, block bypassed")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
@pytest.mark.slow
def test_the_toy_picture_fills_the_image_box_and_the_legend_shows(toy_page):
    from playwright.sync_api import sync_playwright

    blocks, launch = toy_page
    launch = {**launch, "server_port": free_port()}
    demo_app.start(blocks, launch, wait=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(blocks.local_url)
            page.click('#examples [data-testid="dataset-cell-0-0"]', timeout=30_000)
            page.wait_for_function(
                "(img => img && img.complete && img.naturalWidth > 0)(document.querySelector('#image img'))",
                timeout=10_000,
            )
            shown = page.evaluate(
                "(() => { const img = document.querySelector('#image img'); const box = img.getBoundingClientRect(); "
                "return [img.naturalWidth, box.width, getComputedStyle(img).imageRendering]; })()"
            )
            legend = page.evaluate(
                "[...document.querySelectorAll('#legend img')].map(img => [img.complete, img.naturalWidth])"
            )
        finally:
            browser.close()
    natural, width, rendering = shown
    assert natural == 64 and width >= 4 * natural and rendering == "pixelated"
    assert legend == [[True, 40]] * len(CATEGORIES)


def test_pixel_bounds_on_a_model_with_one_image_size_are_one_line_and_exit_code_2(folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_app.main(["--model-path", folders["trained"], "--max-pixels", "1000", "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error and "max_pixels" in error
