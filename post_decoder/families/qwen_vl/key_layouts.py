"""Qwen-VL's checkpoint key layouts: ours (transformers 5's) and the hub's (saved before transformers 5).

Hub folders such as `Qwen/Qwen2.5-VL-7B-Instruct` name the language model `model.*` and the vision encoder
`visual.*`; transformers 5 (and our saved folders) `model.language_model.*` and `model.visual.*`. `lm_head.*`
and a block's `post_decoder.*` are the same in both. Read by `checkpoint_files` through the family
(replace_bin rewrites a checkpoint under its own names).
"""

from ...family import KeyLayout

HUB, TRANSFORMERS = "Qwen-VL (hub keys)", "Qwen-VL (transformers 5 keys)"

LAYOUTS = {
    TRANSFORMERS: KeyLayout(TRANSFORMERS),
    # The first row whose prefix matches renames a key: `visual.` before the catch-all `model.`.
    HUB: KeyLayout(HUB, (("visual.", "model.visual."), ("model.", "model.language_model."))),
}
