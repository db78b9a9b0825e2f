"""InstructBLIP with a post-interaction block between the language model's final norm and its `lm_head`."""

from dataclasses import dataclass

import torch
from transformers import InstructBlipForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...block import PostDecoderState
from ...compat import output_cache
from ...family import BackboneOutput, pack_images_per_sample
from ...wrapped_model import GenerateOnThisModel, PostDecoderMixin
from .configuration import InstructBlipPostDecoderConfig


@dataclass
class InstructBlipPostDecoderOutput(CausalLMOutputWithPast):
    """The logits and KV cache of the language model, the block's state (pass it back with the KV cache) and, if
    asked, its cross-attention probabilities per layer [B, heads, T, N]."""

    post_decoder_state: PostDecoderState | None = None
    post_decoder_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageInputs:
    """What one pass of the vision encoder, the Q-Former and the projection gives the language model and the block."""

    inputs_embeds: torch.Tensor  # [B, T, D]: the prompt's embeddings, each image's query outputs in its image tokens
    vision_features: torch.Tensor  # [B, N, Dv]: each sample's images, for the block
    vision_mask: torch.Tensor  # [B, N]


class InstructBlipPostDecoderForConditionalGeneration(
    PostDecoderMixin, GenerateOnThisModel, InstructBlipForConditionalGeneration
):
    """`InstructBlipForConditionalGeneration` whose logits are `lm_head(block(h, v))`, h the language model's
    output after its final norm and v, by default, the vision encoder's output after its final layer norm
    (`vision_model.post_layernorm`, the original work's `ln_vision`: [257, 1408] per 224-pixel image).

    With `config.post_decoder_config = None` it is exactly the plain InstructBLIP. `generate` runs its steps on this
    model's forward (`GenerateOnThisModel`), not on the inner language model as InstructBLIP's does: the block's
    state rides with the KV cache, as for every family. It takes `image_embeds` instead of `pixel_values` (an image
    already through the vision encoder, e.g. one image's repeated for a batch of questions about it).
    """

    config_class = InstructBlipPostDecoderConfig

    def __init__(self, config):
        if not config.use_decoder_only_language_model:
            raise ValueError(
                f"the post-decoder block needs a decoder-only language model; this InstructBLIP's is "
                f"{config.text_config.model_type!r} (an encoder-decoder, as Flan-T5): use a Vicuna InstructBLIP"
            )
        super().__init__(config)

    @property
    def lm_head(self) -> torch.nn.Linear:
        """The language model's head (training's heads read `model.lm_head`, as for every family)."""
        return self.language_model.lm_head

    # --- the backbone (see post_decoder/family.py) ---

    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """[I, 1 + patches, Dv]: the vision encoder's output after its final layer norm (LAVIS's
        `ln_vision(visual_encoder(image))`). The expensive part: a question's Q-Former pass can reuse it."""
        return self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
        ).last_hidden_state

    def query_outputs(
        self, image_embeds: torch.Tensor, qformer_input_ids: torch.Tensor, qformer_attention_mask=None
    ) -> torch.Tensor:
        """[I, num_query_tokens, D]: the Q-Former's query outputs for each image and its instruction, projected into
        the language model (what `get_image_features` gives as `pooler_output`, from encoded images)."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=image_embeds.device)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        outputs = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=torch.cat([query_mask, qformer_attention_mask.to(query_mask.device)], dim=1),
            query_embeds=queries,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device),
            return_dict=True,
        )
        return self.language_projection(outputs.last_hidden_state[:, : queries.shape[1]])

    def image_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        qformer_input_ids: torch.Tensor,
        qformer_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.Tensor | None = None,
    ) -> ImageInputs:
        """One pass of the vision encoder (skipped when `image_embeds`, its output, is given) and the Q-Former (which
        reads each image's question) over the images, in order; each sample's images are those its
        `num_query_tokens`-long runs of image tokens stand for."""
        if input_ids is None:
            raise ValueError("with an image, pass input_ids: the block finds each sample's image by its image tokens")
        if qformer_input_ids is None:
            raise ValueError("with an image, pass qformer_input_ids: InstructBLIP's Q-Former reads the question")
        if image_embeds is None:
            image_embeds = self.encode_images(pixel_values, interpolate_pos_encoding)
        projected = self.query_outputs(image_embeds, qformer_input_ids, qformer_attention_mask)
        if self.post_decoder is not None and self.post_decoder.config.vision_source == "projector":
            per_image = projected  # [I, num_query_tokens, D]: the query outputs after the projection
        else:
            per_image = image_embeds  # [I, 257, 1408]: after vision_model.post_layernorm (ln_vision)
        images_per_sample = (input_ids == self.config.image_token_id).sum(dim=1) // self.config.num_query_tokens
        vision_features, vision_mask = pack_images_per_sample(per_image, images_per_sample * per_image.shape[1])
        # The projected queries go into the embeddings here, as InstructBLIP's forward does, so the encoders run once.
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        projected = projected.to(inputs_embeds.device, inputs_embeds.dtype)
        image_positions = self.get_placeholder_mask(input_ids, inputs_embeds)
        return ImageInputs(inputs_embeds.masked_scatter(image_positions, projected), vision_features, vision_mask)

    def backbone_forward(
        self,
        input_ids=None,
        pixel_values=None,
        qformer_input_ids=None,
        qformer_attention_mask=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BackboneOutput:
        """One pass of the vision encoder (none when `image_embeds`, its output, is given), the Q-Former and the
        language model: h, v (+ mask), the KV cache. The cache goes in `kwargs` under `compat.CACHE_KWARG` (its
        name depends on transformers)."""
        vision_features, vision_mask = None, None
        if pixel_values is not None or image_embeds is not None:
            image = self.image_inputs(
                input_ids,
                pixel_values,
                qformer_input_ids,
                qformer_attention_mask,
                inputs_embeds,
                interpolate_pos_encoding,
                image_embeds,
            )
            inputs_embeds, input_ids = image.inputs_embeds, None
            vision_features, vision_mask = image.vision_features, image.vision_mask
        outputs = self.language_model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return BackboneOutput(outputs.last_hidden_state, vision_features, vision_mask, output_cache(outputs))

    # --- forward (generation: PostDecoderMixin, GenerateOnThisModel) ---

    def forward(
        self,
        pixel_values=None,
        qformer_input_ids=None,
        qformer_attention_mask=None,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        logits_to_keep=0,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.Tensor | None = None,
        post_decoder_state: PostDecoderState | None = None,
        output_post_decoder_attentions: bool = False,
        **kwargs,
    ) -> InstructBlipPostDecoderOutput:
        """As InstructBLIP's forward, or any step of a cached sequence: the image (`pixel_values`, or `image_embeds`,
        its vision encoder's output from `encode_images`) and the Q-Former's tokens of its question on the prompt's
        call only; with a block, pass the returned `post_decoder_state` (the block's encoded image) back with the KV
        cache (in `kwargs` under `compat.CACHE_KWARG`) on the later ones (generate() does both)."""
        kwargs.pop("return_dict", None)
        backbone_inputs = dict(
            input_ids=input_ids,
            pixel_values=pixel_values,
            qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            interpolate_pos_encoding=interpolate_pos_encoding,
            image_embeds=image_embeds,
            **kwargs,
        )
        return self.block_forward(
            backbone_inputs,
            labels,
            logits_to_keep,
            post_decoder_state,
            output_post_decoder_attentions,
            InstructBlipPostDecoderOutput,
        )
