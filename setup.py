from setuptools import find_packages, setup

setup(
    name="post-decoder",
    version="0.1.0",
    description=(
        "A post-interaction block before lm_head, trained with DPO, to reduce object hallucination in LLaVA-1.5"
    ),
    packages=find_packages(
        include=["post_decoder", "post_decoder.*", "ha_dpo", "ha_dpo.*", "eval", "eval.*", "demo", "demo.*"]
    ),
    # the shipped toy model, examples and recipe
    package_data={
        "ha_dpo.toy": ["checkpoint/*", "qwen_checkpoint/*", "block/*", "examples/*", "recipe_stage1.json"],
        "eval": ["chair_synonyms.txt"],  # CHAIR's synonym table (data the scorer reads)
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        # .ci/run tests both ends: the whole suite at the newest release allowed, a representative part at
        # the floor (5.17, the GPU machine's). Raise the cap once CI passes on the next release.
        "transformers>=5.17,<5.25",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "protobuf",
        "pillow>=10",
        "numpy",
    ],
    extras_require={
        "train": ["peft>=0.15", "deepspeed>=0.16", "wandb", "matplotlib", "tqdm"],
        "eval": ["pycocotools", "matplotlib", "tqdm", "inflect>=7"],
        "demo": ["gradio>=6,<7", "matplotlib"],
        "test": [
            "pytest>=8",
            "pycocotools",
            "matplotlib",
            "tqdm",
            "inflect>=7",
            "gradio>=6,<7",
            "gradio_client",
            "playwright",
            "peft>=0.15",
            "deepspeed>=0.16",
            "trl>=1.16,<2",
            "ruff>=0.17,<0.18",  # .ci/run lints with it (settings in pyproject.toml)
        ],
    },
    entry_points={
        "console_scripts": [
            "post-decoder-convert-llava=post_decoder.families.llava.original:main",
            "post-decoder-convert-minigpt4=post_decoder.families.minigpt4.original:main",
            "post-decoder-demo=demo.app:main",
            # the training, evaluation and merge commands (their scripts keep working under python/deepspeed)
            "post-decoder-train-dpo=ha_dpo.cli.train_dpo_post:command",
            "post-decoder-train-sft=ha_dpo.cli.train_llava_post:command",
            "post-decoder-pope=eval.pope_eval_post:command",
            "post-decoder-chair=eval.chair_eval_post:command",
            "post-decoder-replace-bin=ha_dpo.cli.replace_bin:main",
        ]
    },
)
