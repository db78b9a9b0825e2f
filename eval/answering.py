"""Greedy answers to many questions about one image, with the image's prompt prefix computed once.

Every POPE prompt of an image starts with the same tokens: the system text, "USER: " and the
image's 576 tokens (LLaVA-1.5; Qwen-VL: its chat template's head and the image's own number of tokens,
from its grid). That prefix (and the block's vision keys/values) is computed once; each batch
of questions continues from a copy of its KV cache. The questions' own tokens are left-padded
after the prefix with explicit position ids, numbered on from the prefix's own positions (the family's:
1-D, or Qwen-VL's M-RoPE, whose text after an image starts past the image's grid), so each answer is the one
`generate` gives the question alone. Greedy decoding stops a row at `</s>` (the model's EOS) and the batch when every
row has stopped, so a large `max_new_tokens` (LLaVA's 128) costs nothing for one-word answers.

A family whose image tokens depend on the question (`prompt_prefix_is_shared = False`: InstructBLIP's Q-Former
reads it) shares no prefix: its image is encoded once (`encoded_image_inputs`), and each batch of its questions
runs whole, left-padded, with the inputs the family reads from each question (`prompt_inputs`).
"""

import copy

import torch

from post_decoder.compat import CACHE_KWARG, output_cache
from post_decoder.errors import InputError
from post_decoder.family import family_for
from post_decoder.images import model_image_inputs, pixel_values

LLAVA_MAX_NEW_TOKENS = 128  # LLaVA's model_vqa_loader.py default


class PrefixCachedAnswerer:
    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        max_new_tokens: int = LLAVA_MAX_NEW_TOKENS,
        batch_size: int = 32,
        prompt_suffix: str = "",
        conv_mode: str | None = None,
    ):
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
        self.family = family_for(model)
        self.family.conversation(conv_mode)  # an unknown mode is refused here, before any image is read
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.prompt_suffix = prompt_suffix
        self.conv_mode = conv_mode or self.family.default_conv_mode_for(model.config)

    def prompt_ids(self, question: str, image=None, image_tokens: list[int] | None = None) -> list[int]:
        """The question's prompt ids, its image's placeholder expanded to `image_tokens` (from
        `image_inputs`), else to `image`'s count under the processor's resize rule (None: not at hand)."""
        prompt = self.family.question_prompt(question, suffix=self.prompt_suffix, conv_mode=self.conv_mode)
        images = None if image is None else [image]
        return self.family.tokenize_prompt(
            prompt, self.tokenizer, self.model.config, images, self.image_processor, image_tokens
        )

    def image_inputs(self, image) -> dict[str, torch.Tensor]:
        """The model's inputs for one image (the family's: LLaVA's `pixel_values`, Qwen-VL's with its grid)."""
        return model_image_inputs(self.model, self.image_processor, [image])

    def pixel_values(self, image) -> torch.Tensor:
        """For a family whose image inputs are pixel values only (LLaVA-1.5)."""
        return pixel_values(self.model, self.image_processor, [image])

    @torch.no_grad()
    def answer(self, image, questions: list[str]) -> list[str]:
        if not self.family.prompt_prefix_is_shared:
            return self._answer_whole_prompts(image, questions)
        image_inputs = self.image_inputs(image)
        counts = self.family.image_token_counts(self.model.config, image_inputs)
        sequences = [self.prompt_ids(question, image_tokens=counts) for question in questions]
        prefix_length = _shared_prefix_length(sequences)
        prefix = torch.tensor([sequences[0][:prefix_length]], device=self.model.device)
        prefix_mask = torch.ones_like(prefix)
        prefix_positions = self.family.prompt_position_ids(self.model, prefix, prefix_mask, image_inputs)
        prefix_output = self.model(
            input_ids=prefix,
            attention_mask=prefix_mask,
            position_ids=prefix_positions,
            **image_inputs,
            use_cache=True,
            logits_to_keep=1,
        )
        answers = []
        for start in range(0, len(sequences), self.batch_size):
            batch = [ids[prefix_length:] for ids in sequences[start : start + self.batch_size]]
            answers.extend(self._continue(prefix, prefix_positions, prefix_output, batch))
        return answers

    def _answer_whole_prompts(self, image, questions: list[str]) -> list[str]:
        """The image encoded once; each batch of its questions runs whole, the encoded image repeated for it."""
        image_inputs = self.image_inputs(image)
        counts = self.family.image_token_counts(self.model.config, image_inputs)
        encoded = self.family.encoded_image_inputs(self.model, image_inputs)
        pad, device = self.tokenizer.pad_token_id, self.model.device
        answers = []
        for start in range(0, len(questions), self.batch_size):
            batch = questions[start : start + self.batch_size]
            input_ids, attention_mask = _left_padded(
                [self.prompt_ids(q, image_tokens=counts) for q in batch], pad, device
            )
            images = {name: value.expand(len(batch), *value.shape[1:]) for name, value in encoded.items()}
            texts = [question + self.prompt_suffix for question in batch]
            from_prompts = self.family.prompt_inputs(texts, self.image_processor)
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=self.family.prompt_position_ids(self.model, input_ids, attention_mask, images),
                **images,
                **{name: value.to(device) for name, value in from_prompts.items()},
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
            new_tokens = generated[:, input_ids.shape[1] :]
            answers += [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return answers

    def _continue(self, prefix: torch.Tensor, prefix_positions, prefix_output, suffixes: list[list[int]]) -> list[str]:
        count, prefix_length = len(suffixes), prefix.shape[1]
        longest = max(map(len, suffixes))
        pad = self.tokenizer.pad_token_id
        rows, masks = [], []
        for suffix in suffixes:
            padding = longest - len(suffix)
            rows.append([pad] * padding + suffix)
            masks.append([0] * padding + [1] * len(suffix))
        device = prefix.device
        input_ids = torch.cat([prefix.expand(count, -1), torch.tensor(rows, device=device)], dim=1)
        prefix_mask = torch.ones(count, prefix_length, dtype=torch.long, device=device)
        suffix_mask = torch.tensor(masks, device=device)
        attention_mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        # A suffix's padding takes its first token's position: each row continues the prefix as if alone.
        prefix_positions = prefix_positions.expand(*prefix_positions.shape[:-2], count, -1)
        suffix_positions = self.family.continued_position_ids(suffix_mask, prefix_positions, prefix_mask)
        position_ids = torch.cat([prefix_positions, suffix_positions], dim=-1)
        cache = copy.deepcopy(output_cache(prefix_output))
        cache.batch_repeat_interleave(count)
        extra = {}
        if getattr(prefix_output, "post_decoder_state", None) is not None:
            extra["post_decoder_state"] = prefix_output.post_decoder_state.repeated(count)
        generated = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_KWARG: cache},
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            **extra,
        )
        new_tokens = generated[:, input_ids.shape[1] :]  # after a row's EOS: padding, dropped by the decode
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


def _shared_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens all sequences share, leaving each at least one token of its own."""
    length = min(map(len, sequences)) - 1
    for index in range(length):
        if any(ids[index] != sequences[0][index] for ids in sequences):
            return index
    return length
