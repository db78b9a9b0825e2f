"""Greedy descriptions of many images, decoded many at once.

CHAIR asks every image the same question, so the prompts differ only in the image: a batch of images is
one `generate` call on left-padded rows (`post_decoder.inference.answer_batch`; LLaVA-1.5's rows are all
the same length), each row with its own image's KV cache and the block's vision keys/values. A row stops
at `</s>` and the batch when every row has, so `max_new_tokens` 512 costs what the longest description
needs. Each description equals per-image `generate`'s, token for token (tests/test_chair_eval_cli.py).
"""

from post_decoder.errors import InputError
from post_decoder.family import family_for
from post_decoder.inference import answer_batch

DESCRIPTION_PROMPT = "Please describe this image in detail."  # the prompt CHAIR evaluations of LLaVA-1.5 commonly use
CHAIR_MAX_NEW_TOKENS = 512


class BatchedDescriber:
    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        prompt: str = DESCRIPTION_PROMPT,
        max_new_tokens: int = CHAIR_MAX_NEW_TOKENS,
        batch_size: int = 16,
        conv_mode: str | None = None,
    ):
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"the prompt is empty ({prompt!r}): pass the question that asks for a description")
        family = family_for(model)
        family.conversation(conv_mode)  # an unknown mode is refused here, before any image is read
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.prompt, self.max_new_tokens, self.batch_size = prompt, max_new_tokens, batch_size
        self.conv_mode = conv_mode or family.default_conv_mode_for(model.config)  # the template the model answers in

    def describe(self, pictures: list) -> list[str]:
        """One description per PIL image, `batch_size` images per `generate` call."""
        return answer_batch(
            self.model,
            self.tokenizer,
            self.image_processor,
            pictures,
            [self.prompt] * len(pictures),
            batch_size=self.batch_size,
            conv_mode=self.conv_mode,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
