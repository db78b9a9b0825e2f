"""`load_tokenizer`: a Llama (SentencePiece) checkpoint's tokenizer with the ids its original code gave: LLaVA-1.5's,
which LLaVA and HA-DPO trained and evaluated with, and MiniGPT-4's (it loads Llama's tokenizer with `use_fast=False`
too).

LLaVA loads its tokenizer with `use_fast=False`: transformers 4.x's SentencePiece `LlamaTokenizer`. Transformers
5's `AutoTokenizer` always builds the `tokenizers` (Rust) version instead, which gives other ids wherever text has a
leading space or a run of spaces (`" leading"`: `[1, 8236]` instead of `[1, 29871, 8236]`). So a folder that ships
`tokenizer.model` (llava-hf and original LLaVA folders both do) gets `LlavaLlamaTokenizer` here: transformers'
`SentencePieceBackend` driven as LLaVA's pinned transformers 4.37 drove its slow Llama tokenizer, its `legacy` flag
included (the official LLaVA-1.5 folders say `legacy: false`: text right after a special token such as `</s>` gets no
dummy-prefix space). A folder with only a `tokenizer.json` (the tiny test models, the shipped toy model) keeps
`AutoTokenizer`'s fast tokenizer, unchanged.
"""

import json
import os

from transformers import AutoTokenizer
from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend
from transformers.utils import cached_file

from .atomic_files import atomic_file
from .errors import InputError

SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Saved folders name transformers' class, so that LLaVA's own code (4.x, `use_fast=False`) and transformers 5 can
# both load them; `load_tokenizer` picks this class from the files, not from the name.
SAVED_CLASS_NAME = "LlamaTokenizer"


class LlavaLlamaTokenizer(SentencePieceBackend):
    """Llama's SentencePiece tokenizer with the ids of transformers 4.37's slow `LlamaTokenizer`.

    legacy=False (what LLaVA-1.5's folders ask for): the SentencePiece model runs without its dummy prefix, and one
    `▁` is put back at the very start of the text only, so text after a special token is encoded as it stands.
    legacy=True (transformers 4.x's default when a folder says nothing): every piece between special tokens gets
    the dummy prefix. Special tokens and added tokens (`<s>`, `</s>`, `<unk>`, `<image>`, `<pad>`) are split out
    of the text first, in both modes.
    """

    model_input_names = ("input_ids", "attention_mask")  # no token_type_ids, as Llama
    padding_side = "left"  # transformers' Llama default; LLaVA's folders say "right" and win

    def __init__(
        self,
        vocab_file: str,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        legacy: bool | None = None,
        clean_up_tokenization_spaces: bool = False,
        **kwargs,
    ):
        legacy = True if legacy is None else legacy  # transformers 4.x's default for a folder without the flag
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        pattern = {(True, False): "bos", (True, True): "bos_eos", (False, True): "eos"}.get(
            (add_bos_token, add_eos_token), "none"
        )
        super().__init__(
            vocab_file=vocab_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            legacy=legacy,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            special_tokens_pattern=kwargs.pop("special_tokens_pattern", pattern),
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            **kwargs,
        )

    def tokenize(self, text: str, **kwargs) -> list[str]:
        if self.legacy or not text:
            return super().tokenize(text, **kwargs)
        # The model lost its dummy prefix (so pieces after special tokens get none): give the whole text one.
        # A `▁` inside the text is a character like any other, as SentencePiece would read it: a space.
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            return tokens[1:]  # the prefix belonged to nothing: the text starts with a special token
        return tokens

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Pieces back to text through SentencePiece (it joins byte-fallback pieces into characters); added and
        special tokens are written as they are, and the dummy-prefix space at the start is dropped."""
        out, run = [], []
        literal = set(self._added_tokens_encoder) | set(self.all_special_tokens)
        for token in tokens:
            if token in literal:
                out.append(self._decode_run(run, first=not out))
                out.append(token)
                run = []
            else:
                run.append(token)
        out.append(self._decode_run(run, first=not out))
        return "".join(out)

    def _decode_run(self, pieces: list[str], first: bool) -> str:
        if not pieces:
            return ""
        if first and not self.legacy and pieces[0].startswith(SPIECE_UNDERLINE):
            pieces = [pieces[0][1:], *pieces[1:]]  # without the dummy prefix the model would keep this space
        return self.sp_model.decode(pieces)

    def save_pretrained(self, save_directory, *args, **kwargs):
        files = super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        # transformers drops these from the saved config; LLaVA's folders keep them, and so do we (with the class
        # name LLaVA's code knows).
        config.update(
            tokenizer_class=SAVED_CLASS_NAME,
            add_bos_token=self.add_bos_token,
            add_eos_token=self.add_eos_token,
            legacy=self.legacy,
        )
        config.pop("special_tokens_pattern", None)
        with atomic_file(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return files


def has_sentencepiece_model(path_or_hub_id: str, **hub_kwargs) -> bool:
    """Whether the folder (or hub repository) ships Llama's `tokenizer.model`."""
    if os.path.isdir(path_or_hub_id):
        return os.path.isfile(os.path.join(path_or_hub_id, SENTENCEPIECE_FILE))
    try:
        found = cached_file(
            path_or_hub_id,
            SENTENCEPIECE_FILE,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except (OSError, ValueError):  # not a repository id, or not reachable
        return False
    return found is not None


def load_tokenizer(path_or_hub_id: str, **kwargs):
    """The tokenizer of a checkpoint folder or hub id: `LlavaLlamaTokenizer` (LLaVA's ids) when it ships
    `tokenizer.model`, transformers' `AutoTokenizer` otherwise. `kwargs` go to `from_pretrained`."""
    hub_kwargs = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only") if key in kwargs}
    if has_sentencepiece_model(path_or_hub_id, **hub_kwargs):
        return LlavaLlamaTokenizer.from_pretrained(path_or_hub_id, **kwargs)
    if not os.path.isdir(path_or_hub_id):
        try:
            return AutoTokenizer.from_pretrained(path_or_hub_id, **kwargs)
        except (OSError, ValueError):  # not a folder here, not a valid hub id, or the hub has none or is out of reach
            raise InputError(
                f"{path_or_hub_id}: no such folder, and no tokenizer on the hub under that id (or no internet): "
                "name a checkpoint folder"
            ) from None
    if not any(
        os.path.isfile(os.path.join(path_or_hub_id, name)) for name in ("tokenizer.json", TOKENIZER_CONFIG_FILE)
    ):
        raise InputError(
            f"{path_or_hub_id} has no tokenizer ({SENTENCEPIECE_FILE}, tokenizer.json or {TOKENIZER_CONFIG_FILE}): "
            "name a checkpoint folder, or copy its tokenizer files into this one"
        )
    return AutoTokenizer.from_pretrained(path_or_hub_id, **kwargs)
