"""The trainer: the Trainer subclasses, the model they train, and checkpoints of the trainable weights."""
