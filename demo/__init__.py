"""The Gradio page: base and trained answers side by side, with where the block looked."""
