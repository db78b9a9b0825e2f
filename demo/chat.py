"""The model side of the page: prompts that fit the context, and answers streamed from several models at once.

Each model continues its own conversation (its own earlier answers) in its family's template, the image in the
first user turn, expanded to that image's own token count (which varies with the image for Qwen-VL). A family whose
template holds one question (InstructBLIP) gets the question alone. A prompt too long for the context first loses
its oldest turns, then the end of the question; each cut comes back as a note for the page to show.
"""

import queue
import threading
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from post_decoder.family import family_for
from post_decoder.images import model_image_inputs

from .loading import LoadedModel


class PromptTooLong(ValueError):
    """Even an empty question does not leave room for the answer."""


@dataclass
class Decoding:
    sample: bool = False  # greedy when False
    temperature: float = 0.7
    max_new_tokens: int = 128


@dataclass
class Prompt:
    ids: list[int]
    question: str  # as sent: cut when it did not fit
    kept_turns: list[tuple[str, str]]  # the earlier turns that fit
    notes: list[str] = field(default_factory=list)


def conversation_ids(
    loaded: LoadedModel, turns: list[tuple[str, str]], question: str, image_tokens: list[int]
) -> list[int]:
    """The prompt's ids, its one image (in the first turn) expanded to `image_tokens` ([count], from the family's
    `image_token_counts`; [] for no image)."""
    family = family_for(loaded.model)
    conversation = loaded.conversation()
    with_image = bool(image_tokens)
    for index, (asked, answered) in enumerate(turns):
        conversation.add_user(asked, with_image=with_image and index == 0).add_assistant(answered)
    conversation.add_user(question, with_image=with_image and not turns).add_assistant(None)
    return family.tokenize_prompt(
        conversation.prompt(), loaded.tokenizer, loaded.model.config, image_tokens=image_tokens
    )


def image_inputs_of(loaded: LoadedModel, image) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The image's keyword inputs for the model (its family's, on its device) and [its placeholder count]."""
    inputs = model_image_inputs(loaded.model, loaded.image_processor, [image])
    return inputs, family_for(loaded.model).image_token_counts(loaded.model.config, inputs)


def model_inputs(loaded: LoadedModel, image_inputs: dict[str, torch.Tensor], question: str) -> dict[str, torch.Tensor]:
    """The image's inputs and those the family reads from the question beside it (InstructBLIP's Q-Former reads
    it), on the model's device."""
    extra = family_for(loaded.model).prompt_inputs([question], loaded.image_processor)
    return {**image_inputs, **{name: value.to(loaded.model.device) for name, value in extra.items()}}


def unseen_image_tokens(loaded: LoadedModel) -> list[int]:
    """[count] of an image not yet seen, for limits set before any upload; [] when the count varies with the image
    (the family refuses to guess): the limit is then the text's, and `fit_prompt` says when an image does not fit."""
    try:
        return [family_for(loaded.model).image_token_count(loaded.model.config)]
    except ValueError:
        return []


def fit_prompt(
    loaded: LoadedModel, turns: list[tuple[str, str]], question: str, max_new_tokens: int, image_tokens: list[int]
) -> Prompt:
    """The prompt for `question` after `turns` about an image of `image_tokens` ([count]), leaving `max_new_tokens`
    of the context for the answer."""
    limit = loaded.context_limit - max_new_tokens
    notes = []
    turns = list(turns)
    if turns and not loaded.multi_turn:
        notes.append(f"this model's prompt holds one question: the {len(turns)} earlier turn(s) were not sent")
        turns = []
    ids = conversation_ids(loaded, turns, question, image_tokens)
    dropped = 0
    while len(ids) > limit and turns:
        turns.pop(0)
        dropped += 1
        ids = conversation_ids(loaded, turns, question, image_tokens)
    if dropped:
        notes.append(f"the {dropped} oldest turn(s) were left out of the prompt to fit the context")
    if len(ids) > limit:
        question, ids, before, after = _cut_question(loaded, question, limit, image_tokens)
        notes.append(
            f"the question was cut from {before} to {after} tokens to fit the model's context "
            f"({loaded.context_limit} tokens, {max_new_tokens} of them kept for the answer)"
        )
    return Prompt(ids, question, turns, notes)


def _cut_question(loaded: LoadedModel, question: str, limit: int, image_tokens: list[int]):
    tokens = loaded.tokenizer(question, add_special_tokens=False).input_ids
    overhead = len(conversation_ids(loaded, [], "", image_tokens))
    if overhead >= limit:
        answer_room = loaded.context_limit - overhead - 1  # one token for the shortest question
        raise PromptTooLong(
            f"The image and the conversation template take {overhead} of the model's {loaded.context_limit} tokens, "
            + (
                f"which leaves room for {answer_room} answer tokens: lower the max new tokens to {answer_room}."
                if answer_room > 0
                else "which leaves no room for a question: this model's context is too short for the page."
            )
        )
    keep = min(len(tokens), limit - overhead)
    while True:  # decoding and re-tokenizing can change the count a little: shrink until it fits
        cut = loaded.tokenizer.decode(tokens[:keep], skip_special_tokens=True)
        ids = conversation_ids(loaded, [], cut, image_tokens)
        if len(ids) <= limit or keep == 0:
            return cut, ids, len(tokens), keep
        keep = max(0, keep - (len(ids) - limit))


@dataclass
class Job:
    """One model's answer to generate."""

    loaded: LoadedModel
    prompt: Prompt
    inputs: dict[str, torch.Tensor]  # the image's keyword inputs for forward and generate, on the model's device


@dataclass
class Answer:
    text: str
    ids: list[int]  # the generated token ids (with the end-of-sequence token when it came)


class _TaggedStreamer(TextStreamer):
    """Puts each finished piece of text on a queue shared by all the models, tagged with its model."""

    def __init__(self, tokenizer, tag: str, events: queue.Queue):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.tag, self.events = tag, events

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text:
            self.events.put((self.tag, "text", text))


class _Cancelled(StoppingCriteria):
    """Stops generation when the page's request goes away (the reader of the stream stopped)."""

    def __init__(self, cancelled: threading.Event):
        self.cancelled = cancelled

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool, device=input_ids.device)


def _generate(tag: str, job: Job, decoding: Decoding, events: queue.Queue, cancelled: threading.Event):
    try:
        loaded = job.loaded
        input_ids = torch.tensor([job.prompt.ids], device=loaded.model.device)
        sampling = (
            {"do_sample": True, "temperature": decoding.temperature} if decoding.sample else {"do_sample": False}
        )
        with torch.no_grad():
            output = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **job.inputs,
                max_new_tokens=decoding.max_new_tokens,
                pad_token_id=loaded.tokenizer.pad_token_id,
                streamer=_TaggedStreamer(loaded.tokenizer, tag, events),
                stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
                **sampling,
            )
        ids = output[0, input_ids.shape[1] :].tolist()
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
        events.put((tag, "done", Answer(text, ids)))
    except Exception as error:  # handed to the reader, which raises it in the request
        events.put((tag, "error", error))


def stream_answers(jobs: dict[str, Job], decoding: Decoding):
    """Generate every job's answer at once, each in its own thread. Yields `(texts, answers)` after
    each new piece: the text so far of every job, and the `Answer`s of those finished."""
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()
    threads = [
        threading.Thread(target=_generate, args=(tag, job, decoding, events, cancelled), daemon=True)
        for tag, job in jobs.items()
    ]
    for thread in threads:
        thread.start()
    texts = {tag: "" for tag in jobs}
    answers: dict[str, Answer] = {}
    try:
        while len(answers) < len(jobs):
            tag, kind, payload = events.get()
            if kind == "error":
                raise payload
            if kind == "text":
                texts[tag] += payload
            else:
                answers[tag] = payload
                texts[tag] = payload.text
            yield dict(texts), dict(answers)
    finally:
        cancelled.set()  # a reader that stops early (or an error) stops the other threads too
