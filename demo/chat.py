"""The model side of the page: LLaVA-1.5 prompts that fit the context, and answers streamed from
several models at once.

Each model continues its own conversation (its own earlier answers) in LLaVA-1.5's template, the
image in the first user turn. A prompt too long for the context first loses its oldest turns,
then the end of the question; each cut comes back as a note for the page to show.
"""

import queue
import threading
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from post_decoder.family import family_for

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


def conversation_ids(loaded: LoadedModel, turns: list[tuple[str, str]], question: str) -> list[int]:
    family = family_for(loaded.model)
    conversation = family.conversation()
    for index, (asked, answered) in enumerate(turns):
        conversation.add_user(asked, with_image=index == 0).add_assistant(answered)
    conversation.add_user(question, with_image=not turns).add_assistant(None)
    return family.tokenize_prompt(conversation.prompt(), loaded.tokenizer, loaded.model.config)


def fit_prompt(loaded: LoadedModel, turns: list[tuple[str, str]], question: str, max_new_tokens: int) -> Prompt:
    """The prompt for `question` after `turns`, leaving `max_new_tokens` of the context for the answer."""
    limit = loaded.context_limit - max_new_tokens
    notes = []
    turns = list(turns)
    ids = conversation_ids(loaded, turns, question)
    dropped = 0
    while len(ids) > limit and turns:
        turns.pop(0)
        dropped += 1
        ids = conversation_ids(loaded, turns, question)
    if dropped:
        notes.append(f"the {dropped} oldest turn(s) were left out of the prompt to fit the context")
    if len(ids) > limit:
        question, ids, before, after = _cut_question(loaded, question, limit)
        notes.append(
            f"the question was cut from {before} to {after} tokens to fit the model's context "
            f"({loaded.context_limit} tokens, {max_new_tokens} of them kept for the answer)"
        )
    return Prompt(ids, question, turns, notes)


def _cut_question(loaded: LoadedModel, question: str, limit: int):
    tokens = loaded.tokenizer(question, add_special_tokens=False).input_ids
    overhead = len(conversation_ids(loaded, [], ""))
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
        ids = conversation_ids(loaded, [], cut)
        if len(ids) <= limit or keep == 0:
            return cut, ids, len(tokens), keep
        keep = max(0, keep - (len(ids) - limit))


@dataclass
class Job:
    """One model's answer to generate."""

    loaded: LoadedModel
    prompt: Prompt
    pixel_values: torch.Tensor


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
                pixel_values=job.pixel_values,
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
