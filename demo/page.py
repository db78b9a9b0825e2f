"""The Gradio page: an image and a question in, the base and trained answers streamed side by side,
and a heat map of where the trained model's block looked.

Every event that runs a model shares one queue slot (`concurrency_id="model"`, limit 1): the
models are loaded once and requests wait their turn.
"""

import math

import gradio as gr
from PIL import Image

from post_decoder.family import family_for

from .chat import (
    Decoding,
    Job,
    PromptTooLong,
    conversation_ids,
    fit_prompt,
    image_inputs_of,
    model_inputs,
    stream_answers,
    unseen_image_tokens,
)
from .heatmap import NoGrid, answer_attention, overlay, seen_image, token_choices, token_map
from .loading import LoadedModel
from .toy_world import UPSCALED_CLASS, introduction, legend_html
from .uploads import DEFAULT_MAX_IMAGE_PIXELS, UploadRefused, open_upload

BASE, TRAINED = "base", "trained"
AVERAGE = -1
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=1)


def new_session() -> dict:
    return {"image": None, "turns": {BASE: [], TRAINED: []}}


def chat_messages(turns: list[tuple[str, str]], question: str | None = None, partial: str | None = None) -> list[dict]:
    messages = []
    for asked, answered in turns:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    if question is not None:
        messages.append({"role": "user", "content": question})
        if partial:
            messages.append({"role": "assistant", "content": partial})
    return messages


class Page:
    """The handlers, bound to the loaded models (`base` may be None: then only the trained column answers)."""

    def __init__(
        self, trained: LoadedModel, base: LoadedModel | None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ):
        self.sides = {TRAINED: trained} if base is None else {BASE: base, TRAINED: trained}
        self.trained = trained
        self.max_image_pixels = max_image_pixels

    def max_new_tokens_limit(self) -> int:
        """The most answer tokens every model's context has room for after a one-word question."""
        return max(
            1,
            min(
                1024,
                *(
                    loaded.context_limit - len(conversation_ids(loaded, [], "?", unseen_image_tokens(loaded)))
                    for loaded in self.sides.values()
                ),
            ),
        )

    def decoding(self, mode, temperature, max_new_tokens) -> Decoding:
        """The decoding settings, or a message saying which one to change (the API can send any value)."""
        if mode not in ("greedy", "sample"):
            raise gr.Error(f'Decoding must be "greedy" or "sample", not {mode!r}.')
        try:
            temperature, tokens = float(temperature), float(max_new_tokens)
        except (TypeError, ValueError) as error:
            raise gr.Error("Temperature and max new tokens must be numbers.") from error
        if mode == "sample" and not (math.isfinite(temperature) and temperature > 0):
            raise gr.Error(
                f"Temperature must be above 0 when sampling (it is {temperature:g}): raise it, or choose greedy."
            )
        limit = self.max_new_tokens_limit()
        if not (tokens.is_integer() and 1 <= tokens <= limit):
            raise gr.Error(
                f"Max new tokens must be a whole number from 1 to {limit} (it is {tokens:g}): {limit} is what the "
                "model's context leaves after the image and a short question."
            )
        return Decoding(mode == "sample", temperature, int(tokens))

    def answer(self, image, question, decoding_mode, temperature, max_new_tokens, session):
        """Streams (base chat, trained chat, heat map, its caption, token choice, notes, session, heat-map state).

        Runs with `preprocess=False`: `image` is the upload's file data (gradio has checked that
        the file was uploaded, but not opened it), so a file that is not an image is our message."""
        image_path = image.get("path") if isinstance(image, dict) else image
        if image_path is None:
            raise gr.Error("Upload an image or pick an example first.")
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question.")
        decoding = self.decoding(decoding_mode, temperature, max_new_tokens)
        try:
            image = open_upload(image_path, self.max_image_pixels)
        except UploadRefused as refused:
            raise gr.Error(str(refused)) from refused
        session = session if session and session["image"] == image_path else new_session()
        session["image"] = image_path

        jobs, notes = {}, []
        for side, loaded in self.sides.items():
            image_inputs, image_tokens = image_inputs_of(loaded, image)
            try:
                prompt = fit_prompt(loaded, session["turns"][side], question, decoding.max_new_tokens, image_tokens)
            except PromptTooLong as error:
                raise gr.Error(str(error)) from error
            notes += [f"{side}: {note}" for note in prompt.notes]
            jobs[side] = Job(loaded, prompt, model_inputs(loaded, image_inputs, prompt.question))

        def chats(texts):
            return {
                side: chat_messages(jobs[side].prompt.kept_turns, jobs[side].prompt.question, texts.get(side))
                for side in jobs
            }

        note = "\n".join(f"- {line}" for line in notes)
        answers = {}
        for texts, answers in stream_answers(jobs, decoding):  # noqa: B007 (the last answers are used below)
            shown = chats(texts)
            yield shown.get(BASE, []), shown[TRAINED], None, "", gr.update(), note, session, None

        for side, job in jobs.items():
            session["turns"][side] = job.prompt.kept_turns + [(job.prompt.question, answers[side].text)]
        trained_job, trained_ids = jobs[TRAINED], answers[TRAINED].ids
        heat, caption, choice, state = None, "", gr.update(choices=[], value=None), None
        try:
            attention = answer_attention(self.trained, trained_job.prompt.ids, trained_ids, trained_job.inputs)
        except NoGrid as no_grid:
            attention, caption = None, str(no_grid)
        if attention is None:
            caption = caption or "No heat map: the trained model has no cross-attention block."
        else:
            grid = attention.shape[1:]
            state = {
                "attention": attention,
                "ids": trained_ids,
                "seen": seen_image(trained_job.inputs, image, self.trained.image_processor, grid),
            }
            heat, caption = self.draw(state, AVERAGE)
            choice = gr.update(choices=token_choices(self.trained.tokenizer, trained_ids), value=AVERAGE)
        chats_now = {side: chat_messages(turns) for side, turns in session["turns"].items()}
        yield chats_now[BASE] if BASE in jobs else [], chats_now[TRAINED], heat, caption, choice, note, session, state

    def draw(self, state, choice) -> tuple[Image.Image, str]:
        """The overlay for one answer token (or the average) and a caption with the numbers behind it."""
        choice = AVERAGE if choice is None else int(choice)
        grid = token_map(state["attention"], choice, state["ids"], set(self.trained.tokenizer.all_special_ids))
        what = "Averaged over the answer" if choice == AVERAGE else f"Token {choice + 1}"
        caption = (
            f"{what}: the most-attended patch holds {grid.max() / grid.sum():.1%} of the attention "
            f"(uniform: {1 / grid.size:.1%}, {grid.shape[0]}x{grid.shape[1]} patches); "
            "colours are scaled to that maximum."
        )
        return overlay(state["seen"], grid), caption

    def redraw(self, choice, state):
        if state is None:
            raise gr.Error("Ask a question first: the heat map belongs to the trained model's answer.")
        return self.draw(state, choice)

    @staticmethod
    def reset():
        return [], [], None, "", gr.update(choices=[], value=None), "", new_session(), None


def build_page(
    trained: LoadedModel,
    base: LoadedModel | None,
    example_sets: list,
    default_max_new_tokens: int = 128,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    toy: bool = False,
) -> gr.Blocks:
    """`example_sets`: objects with `label`, `examples` ([image, question] lists) and `elem_id`, shown in
    that order. `toy`: the models are the toy world's: the page explains the world and shows its legend,
    and scales the tiny pictures up for display (serve it with `launch(css=PAGE_CSS)`)."""
    page = Page(trained, base, max_image_pixels)
    limit = page.max_new_tokens_limit()
    base_label = base.label if base else "none (start the page with --base-model-path to compare)"
    how_base = (
        " (the trained model with its block bypassed: the same backbone and lm_head)" if base and base.bypassed else ""
    )
    templates = ", ".join(dict.fromkeys(family_for(loaded.model).name for loaded in page.sides.values()))
    with gr.Blocks(title="post-decoder: base vs trained", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# Base vs trained\n"
            f"**Base**: {base_label}{how_base}  \n**Trained**: {trained.label}  \n"
            + (f"{introduction()}  \n" if toy else "")
            + f"Answers use each model's own prompt template ({templates}); follow-up questions continue each "
            "model's own chat where its template has turns. A new image starts a new chat.",
            elem_id="header",
        )
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(
                    type="filepath",
                    sources=["upload", "clipboard"],
                    label="Image",
                    height=320,
                    elem_id="image",
                    elem_classes=[UPSCALED_CLASS] if toy else None,
                )
                if toy:
                    with gr.Accordion("Which shape is which object", open=True):
                        gr.HTML(legend_html(), elem_id="legend")
            with gr.Column(scale=3):
                question = gr.Textbox(
                    label="Question", lines=2, placeholder="Is there a dog in the image?", elem_id="question"
                )
                with gr.Row():
                    submit = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear = gr.Button("New chat", elem_id="clear")
                with gr.Accordion("Decoding", open=False):
                    decoding_mode = gr.Radio(["greedy", "sample"], value="greedy", label="Decoding")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampling only)")
                    max_new_tokens = gr.Slider(
                        1, limit, value=min(default_max_new_tokens, limit), step=1, label="Max new tokens"
                    )
                for example_set in example_sets:
                    gr.Examples(
                        example_set.examples,
                        inputs=[image, question],
                        label=example_set.label,
                        cache_examples=False,
                        examples_per_page=6,
                        elem_id=example_set.elem_id,
                    )
        with gr.Row():
            base_chat = gr.Chatbot(label=f"Base: {base_label}", height=320, elem_id="base-chat")
            trained_chat = gr.Chatbot(label=f"Trained: {trained.label}", height=320, elem_id="trained-chat")
        with gr.Row():
            with gr.Column(scale=2):
                heat = gr.Image(
                    label="Where the trained model's block looked",
                    type="pil",
                    format="png",
                    height=336,
                    interactive=False,
                    elem_id="heatmap",
                )
            with gr.Column(scale=3):
                token = gr.Dropdown(
                    choices=[], label="Heat map for the answer token", interactive=True, elem_id="token"
                )
                heat_caption = gr.Markdown(elem_id="heat-caption")
                note = gr.Markdown(elem_id="note")
        session = gr.State(new_session())
        heat_state = gr.State(None)

        outputs = [base_chat, trained_chat, heat, heat_caption, token, note, session, heat_state]
        inputs = [image, question, decoding_mode, temperature, max_new_tokens, session]
        # preprocess=False: `answer` opens the upload itself, so a broken file gets a message (see answer).
        submit.click(page.answer, inputs, outputs, api_name="answer", preprocess=False, **MODEL_QUEUE)
        question.submit(page.answer, inputs, outputs, api_visibility="private", preprocess=False, **MODEL_QUEUE)
        token.input(page.redraw, [token, heat_state], [heat, heat_caption], api_name="heatmap", **MODEL_QUEUE)
        clear.click(page.reset, None, outputs, api_name="new_chat", **MODEL_QUEUE)
        image.change(page.reset, None, outputs, api_visibility="private", **MODEL_QUEUE)
    return blocks
