"""Training of the post-decoder block: DPO on HA-DPO pairs, SFT on LLaVA data, the toy world.

By job: `cli` (the commands, their arguments and recipe files), `data` (samples, images, collators),
`objective` (the DPO loss and the log-probs it compares), `trainer` (the Trainer subclasses, the model
they train, checkpoints) and `toy` (the toy world). `train_dpo_post.py` and `train_llava_post.py` stay
here as thin entries, at the paths HA-DPO's and LLaVA's users run.
"""
