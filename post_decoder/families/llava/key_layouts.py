"""LLaVA-1.5's checkpoint key layouts in one table: ours (transformers 5's), the hub's llava-hf, original LLaVA-1.5.

Read by `original.py` (converting an original folder), by `checkpoint_files` through the family (replace_bin
rewrites a checkpoint under its own names) and by `tiny.py` (writing tiny original folders).
"""

from ...family import KeyLayout

ORIGINAL, LLAVA_HF_HUB, LLAVA_HF = "original LLaVA-1.5", "llava-hf (hub keys)", "llava-hf (transformers 5 keys)"

# A row a part of the model: its prefix in our names, in the hub's llava-hf names, in original LLaVA-1.5's
# (None: no name of its own there). The first row whose prefix matches renames a key; others stay as they are
# (a block's `post_decoder.*` keys are the same in every layout).
PREFIXES = (
    # ours                                  llava-hf on the hub                original LLaVA-1.5
    ("model.multi_modal_projector.linear_1.", "multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.multi_modal_projector.", "multi_modal_projector.", None),
    ("model.vision_tower.", "vision_tower.", "model.vision_tower.vision_tower.vision_model."),  # (a trained tower)
    ("model.language_model.", "language_model.model.", "model."),
    ("lm_head.", "language_model.lm_head.", "lm_head."),
)


def _layout(name: str, column: int) -> KeyLayout:
    return KeyLayout(name, tuple((row[column], row[0]) for row in PREFIXES if row[column] is not None))


LAYOUTS = {LLAVA_HF: KeyLayout(LLAVA_HF), LLAVA_HF_HUB: _layout(LLAVA_HF_HUB, 1), ORIGINAL: _layout(ORIGINAL, 2)}
