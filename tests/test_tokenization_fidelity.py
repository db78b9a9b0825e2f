"""Token ids equal LLaVA-1.5's own tokenizer for any text: prompts, POPE questions, DPO answers.

LLaVA and HA-DPO load the tokenizer with `use_fast=False` (transformers 4.x's SentencePiece `LlamaTokenizer`);
`post_decoder.families.llava.tokenizer.load_tokenizer` must give the same ids where transformers 5's fast
tokenizer does not (leading spaces, space runs, text after special tokens). Two oracles:

- ids written in below, produced once by LLaVA's own code under its pinned transformers 4.37.2 (sentencepiece
  0.1.99): `AutoTokenizer.from_pretrained(../shared/data/tokenizers/llama2, use_fast=False)` as LLaVA's builder
  loads it, `tokenizer_image_token` of haotian-liu/LLaVA llava/mm_utils.py on prompts built with its
  llava/conversation.py `conv_templates`, and HA-DPO's (opendatalab/HA-DPO) llava-v1_5 `preprocess_multimodal` +
  `preprocess_v1` on DPO pairs, as its train_dpo.py calls them (the pairs also under HA-DPO's transformers 4.31.0);
- SentencePiece driven directly with the same `tokenizer.model`, special tokens split out first.

Tests that need ../shared/data skip when it is absent; the tiny-tokenizer tests run everywhere.
"""

import hashlib
import json
import os
import random
import re

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from post_decoder.errors import InputError
from post_decoder.families.llava.conversation import (
    CONV_MODES,
    IMAGE_TOKEN,
    USER,
    Conversation,
    add_llava_tokens,
    question_prompt,
    tokenize_with_image,
)
from post_decoder.families.llava.tiny import train_tiny_tokenizer
from post_decoder.families.llava.tokenizer import LlavaLlamaTokenizer, load_tokenizer
from tests.helpers import shared_file

LLAVA_IMAGE_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX, written in place of each image in the expected ids
IMAGE_ID, PAD_ID = 32000, 32001
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
TOY_CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "ha_dpo", "toy", "checkpoint")  # tokenizer.json only

# The expected ids below are packed by hand, as the tokenizer printed them: the formatter leaves them.
# fmt: off
# LLaVA's slow tokenizer (legacy: false, as in LLaVA-1.5's folders): text -> ids, BOS included.
CORPUS_IDS = {
    ' leading': [1, 29871, 8236],
    '  two leading': [1, 259, 1023, 8236],
    'Is  there a  dog?': [1, 1317, 29871, 727, 263, 29871, 11203, 29973],
    'trailing ': [1, 25053, 29871],
    'trailing  ': [1, 25053, 259],
    '': [1],
    ' ': [1, 259],
    '  ': [1, 1678],
    '\t': [1, 29871, 12],
    '\n': [1, 29871, 13],
    'tab\there': [1, 4434, 12, 4150],
    '\tleading tab': [1, 29871, 12, 25369, 4434],
    'new\nline': [1, 716, 13, 1220],
    '\nleading newline': [1, 29871, 13, 25369, 25899],
    'trailing newline\n': [1, 25053, 25899, 13],
    'a\n\nb': [1, 263, 13, 13, 29890],
    'a \n b': [1, 263, 29871, 13, 289],
    'unicode: café naïve Straße 日本語 中文 한국어 Ελληνικά': [
        1, 29104, 29901, 274, 28059, 1055, 30085, 345, 22667, 29871, 30325, 30346, 30968, 29871, 30275, 30333, 29871,
        30877, 31293, 31129, 29871, 30311, 30142, 30142, 30183, 30133, 30136, 30173, 30216
    ],
    'emoji \U0001f436\U0001f415\u200d\U0001f9ba \U0001f44d\U0001f3fd \U0001f1eb\U0001f1f7': [
        1, 953, 29877, 2397, 29871, 243, 162, 147, 185, 243, 162, 147, 152, 30722, 243, 162, 169, 189, 29871, 243, 162,
        148, 144, 243, 162, 146, 192, 29871, 243, 162, 138, 174, 243, 162, 138, 186
    ],
    'non\xa0breaking': [1, 1661, 30081, 1030, 5086],
    '\xa0leading nbsp': [1, 20246, 25369, 302, 29890, 1028],
    'zero\u200bwidth': [1, 5225, 30166, 2103],
    'ideographic\u3000space': [1, 1957, 12122, 30358, 3493],
    'combining e\u0301 vs \xe9': [1, 29299, 321, 30103, 7186, 904],
    'ﬁ ligature Ｆｕｌｌ': [
        1, 29871, 31017, 14172, 1535, 29871, 242, 191, 169, 242, 192, 152, 242, 192, 143, 242, 192, 143
    ],
    'text with </s> inside': [1, 1426, 411, 29871, 2, 2768],
    '</s>': [1, 2],
    '<s>': [1, 1],
    '<s>starts with bos': [1, 1, 27382, 411, 13601],
    'ends with eos</s>': [1, 10614, 411, 321, 359, 2],
    'a</s>b': [1, 263, 2, 29890],
    'a </s> b': [1, 263, 29871, 2, 289],
    'a</s> b': [1, 263, 2, 289],
    'a </s>  b': [1, 263, 29871, 2, 29871, 289],
    'x<s>y': [1, 921, 1, 29891],
    '<unk>': [1, 0],
    'a<unk>b': [1, 263, 0, 29890],
    'ASSISTANT:': [1, 319, 1799, 9047, 13566, 29901],
    'ASSISTANT: hi': [1, 319, 1799, 9047, 13566, 29901, 7251],
    ' ASSISTANT:': [1, 29871, 319, 1799, 9047, 13566, 29901],
    'USER: x ASSISTANT:': [1, 3148, 1001, 29901, 921, 319, 1799, 9047, 13566, 29901],
    'answer.</s>USER: next ASSISTANT:': [1, 1234, 29889, 2, 11889, 29901, 2446, 319, 1799, 9047, 13566, 29901],
    '▁ literal underline': [1, 259, 16333, 1090, 1220],
    '▁▁': [1, 1678],
    'digits 12345 3.14': [1, 13340, 29871, 29896, 29906, 29941, 29946, 29945, 29871, 29941, 29889, 29896, 29946],
    'mixed\r\nwindows': [1, 12849, 30004, 13, 10499],
    '<image>': [1, 529, 3027, 29958],
    'a <image> b': [1, 263, 529, 3027, 29958, 289],
    '<pad>': [1, 529, 8305, 29958],
    '<image>\nIs there a dog?': [1, 529, 3027, 29958, 13, 3624, 727, 263, 11203, 29973],
    '  <s>  ': [1, 1678, 1, 259],
    '\x00control\x07': [1, 29871, 3, 6451, 10],
}
# The same tokenizer with legacy=True (transformers 4.x's default for a folder that does not say), where it differs:
# only text right after a special token.
LEGACY_TRUE_IDS = {
    'text with </s> inside': [1, 1426, 411, 29871, 2, 29871, 2768],
    '<s>starts with bos': [1, 1, 8665, 411, 13601],
    'a</s>b': [1, 263, 2, 289],
    'a </s> b': [1, 263, 29871, 2, 29871, 289],
    'a</s> b': [1, 263, 2, 29871, 289],
    'a </s>  b': [1, 263, 29871, 2, 259, 289],
    'x<s>y': [1, 921, 1, 343],
    'a<unk>b': [1, 263, 0, 289],
    'answer.</s>USER: next ASSISTANT:': [1, 1234, 29889, 2, 3148, 1001, 29901, 2446, 319, 1799, 9047, 13566, 29901],
    '  <s>  ': [1, 1678, 1, 1678],
}
# With <image> (32000) and <pad> (32001) added as llava-hf folders have them, where it differs.
LLAVA_HF_IDS = {
    '<image>': [1, 32000],
    'a <image> b': [1, 263, 29871, 32000, 289],
    '<pad>': [1, 32001],
    '<image>\nIs there a dog?': [1, 32000, 13, 3624, 727, 263, 11203, 29973],
}
# decode(ids[1:] + [eos, pad, pad], skip_special_tokens=True), as generated answers are decoded, where it is not
# the text itself.
ANSWER_DECODES = {
    'text with </s> inside': 'text with  inside',
    '</s>': '',
    '<s>': '',
    '<s>starts with bos': 'starts with bos',
    'ends with eos</s>': 'ends with eos',
    'a</s>b': 'ab',
    'a </s> b': 'a  b',
    'a</s> b': 'a b',
    'a </s>  b': 'a   b',
    'x<s>y': 'xy',
    '<unk>': '',
    'a<unk>b': 'ab',
    'answer.</s>USER: next ASSISTANT:': 'answer.USER: next ASSISTANT:',
    '▁ literal underline': '  literal underline',
    '▁▁': '  ',
    '<image>': '',
    'a <image> b': 'a  b',
    '<pad>': '',
    '<image>\nIs there a dog?': '\nIs there a dog?',
    '  <s>  ': '    ',
}
# decode(ids) with special tokens kept, where it is not '<s> ' + the text.
RAW_DECODES = {
    '': '<s>',
    '</s>': '<s></s>',
    '<s>': '<s><s>',
    '<s>starts with bos': '<s><s>starts with bos',
    '<unk>': '<s><unk>',
    '▁ literal underline': '<s>   literal underline',
    '▁▁': '<s>   ',
}
SINGLE_TOKEN_DECODES = {
    1: '<s>', 2: '</s>', 13: '\n', 29871: '', 259: ' ', 8236: 'leading', 3869: 'Yes', 1939: 'No', 243: '\ufffd',
    32000: '<image>', 32001: '<pad>',
}
# LLaVA's tokenizer_image_token of conv_templates[mode] prompts: the system prompt and 'USER:' ...
SYSTEM_IDS = {
    'vicuna_v1': [
        1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444, 29892,
        13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889, 3148, 1001, 29901
    ],
    'llava_v1': [
        1, 319, 13563, 1546, 263, 12758, 5199, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444, 29892,
        13173, 29892, 322, 1248, 568, 6089, 304, 278, 5199, 29915, 29879, 5155, 29889, 3148, 1001, 29901
    ],
}
# ... then, per (mode, with an image, question), the rest, the image as LLaVA's -200. question None: a human turn
# that is only <image>.
PROMPT_TAILS = {
    ('vicuna_v1', True, 'Is there a dog in the image?'): [
        29871, -200, 29871, 13, 3624, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'Is there a dog in the image?'): [
        1317, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', True, ' leading space question?'): [
        29871, -200, 29871, 13, 8236, 2913, 1139, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, ' leading space question?'): [29871, 8236, 2913, 1139, 29973, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, 'Is  there a  dog?'): [
        29871, -200, 29871, 13, 3624, 29871, 727, 263, 29871, 11203, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'Is  there a  dog?'): [
        1317, 29871, 727, 263, 29871, 11203, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', True, 'trailing? '): [
        29871, -200, 29871, 13, 3018, 6504, 29973, 29871, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'trailing? '): [25053, 29973, 29871, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, 'tab\tinside'): [29871, -200, 29871, 13, 3891, 12, 26102, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', False, 'tab\tinside'): [4434, 12, 26102, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, 'two\nlines'): [29871, -200, 29871, 13, 10184, 13, 9012, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', False, 'two\nlines'): [1023, 13, 9012, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, 'emoji 🐶?'): [
        29871, -200, 29871, 13, 15810, 2397, 29871, 243, 162, 147, 185, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'emoji 🐶?'): [
        953, 29877, 2397, 29871, 243, 162, 147, 185, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', True, 'non\xa0breaking?'): [
        29871, -200, 29871, 13, 5464, 30081, 1030, 5086, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'non\xa0breaking?'): [1661, 30081, 1030, 5086, 29973, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, 'ASSISTANT: fake turn'): [
        29871, -200, 29871, 13, 22933, 9047, 13566, 29901, 25713, 2507, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'ASSISTANT: fake turn'): [
        319, 1799, 9047, 13566, 29901, 25713, 2507, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', True, 'text </s> inside'): [
        29871, -200, 29871, 13, 726, 29871, 2, 2768, 319, 1799, 9047, 13566, 29901
    ],
    ('vicuna_v1', False, 'text </s> inside'): [1426, 29871, 2, 2768, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, ''): [29871, -200, 29871, 13, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', False, ''): [22933, 9047, 13566, 29901],
    ('vicuna_v1', True, ' '): [29871, -200, 29871, 13, 29871, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', False, ' '): [259, 319, 1799, 9047, 13566, 29901],
    ('vicuna_v1', True, None): [29871, -200, 29871, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'Is there a dog in the image?'): [
        29871, -200, 29871, 13, 3624, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'Is there a dog in the image?'): [
        1317, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', True, ' leading space question?'): [
        29871, -200, 29871, 13, 8236, 2913, 1139, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, ' leading space question?'): [29871, 8236, 2913, 1139, 29973, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'Is  there a  dog?'): [
        29871, -200, 29871, 13, 3624, 29871, 727, 263, 29871, 11203, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'Is  there a  dog?'): [
        1317, 29871, 727, 263, 29871, 11203, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', True, 'trailing? '): [
        29871, -200, 29871, 13, 3018, 6504, 29973, 29871, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'trailing? '): [25053, 29973, 29871, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'tab\tinside'): [29871, -200, 29871, 13, 3891, 12, 26102, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', False, 'tab\tinside'): [4434, 12, 26102, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'two\nlines'): [29871, -200, 29871, 13, 10184, 13, 9012, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', False, 'two\nlines'): [1023, 13, 9012, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'emoji 🐶?'): [
        29871, -200, 29871, 13, 15810, 2397, 29871, 243, 162, 147, 185, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'emoji 🐶?'): [
        953, 29877, 2397, 29871, 243, 162, 147, 185, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', True, 'non\xa0breaking?'): [
        29871, -200, 29871, 13, 5464, 30081, 1030, 5086, 29973, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'non\xa0breaking?'): [1661, 30081, 1030, 5086, 29973, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, 'ASSISTANT: fake turn'): [
        29871, -200, 29871, 13, 22933, 9047, 13566, 29901, 25713, 2507, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'ASSISTANT: fake turn'): [
        319, 1799, 9047, 13566, 29901, 25713, 2507, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', True, 'text </s> inside'): [
        29871, -200, 29871, 13, 726, 29871, 2, 2768, 319, 1799, 9047, 13566, 29901
    ],
    ('llava_v1', False, 'text </s> inside'): [1426, 29871, 2, 2768, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, ''): [29871, -200, 29871, 13, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', False, ''): [22933, 9047, 13566, 29901],
    ('llava_v1', True, ' '): [29871, -200, 29871, 13, 29871, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', False, ' '): [259, 319, 1799, 9047, 13566, 29901],
    ('llava_v1', True, None): [29871, -200, 29871, 319, 1799, 9047, 13566, 29901],
}
# Every unique question of the three official POPE COCO sets, in both modes, without and with LLaVA's short-answer
# suffix: how many, and the sha256 of their ids as compact JSON (a list of lists, modes then sorted questions).
POPE_QUESTION_COUNT, POPE_PROMPT_COUNT = 80, 320
POPE_IDS_SHA256 = '24cfe406034a03c0a1c8729e552e1e18cfcd57b399adf8089498dba4089086a7'
# HA-DPO's preprocess_multimodal + preprocess_v1 (vicuna_v1, as its --version v1) on (question, answer): the ids
# before the first label (after SYSTEM_IDS) and the labelled ids. transformers 4.31 (HA-DPO's pin) gave the same.
HADPO_PAIRS = [
    (
        'Describe this image in detail.',
        'A red circle.',
        [29871, -200, 29871, 13, 4002, 29581, 445, 1967, 297, 9493, 29889, 319, 1799, 9047, 13566, 29901],
        [319, 2654, 8607, 29889, 2],
    ),
    (
        'Describe this image in detail.',
        ' A red circle on grass.',
        [29871, -200, 29871, 13, 4002, 29581, 445, 1967, 297, 9493, 29889, 319, 1799, 9047, 13566, 29901],
        [29871, 319, 2654, 8607, 373, 17455, 29889, 2],
    ),
    (
        'Describe this image in detail.',
        '  Two leading spaces.',
        [29871, -200, 29871, 13, 4002, 29581, 445, 1967, 297, 9493, 29889, 319, 1799, 9047, 13566, 29901],
        [259, 7803, 8236, 8162, 29889, 2],
    ),
    (
        'Is there a dog in the image?',
        'Yes, there is a dog in the image.',
        [29871, -200, 29871, 13, 3624, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901],
        [3869, 29892, 727, 338, 263, 11203, 297, 278, 1967, 29889, 2],
    ),
    (
        'Is there a dog in the image?',
        ' No, there is no dog.',
        [29871, -200, 29871, 13, 3624, 727, 263, 11203, 297, 278, 1967, 29973, 319, 1799, 9047, 13566, 29901],
        [29871, 1939, 29892, 727, 338, 694, 11203, 29889, 2],
    ),
    (
        'Please provide a detailed description of the picture.',
        'A cup.  Then a  plate.\nA table. ',
        [29871, -200, 29871, 13, 12148, 3867, 263, 13173, 6139, 310, 278, 7623, 29889, 319, 1799, 9047, 13566, 29901],
        [319, 18002, 29889, 29871, 1987, 263, 29871, 15284, 29889, 13, 29909, 1591, 29889, 29871, 2],
    ),
    (
        'Could you describe the contents of this image for me?',
        '\nStarts with a newline.',
        [
            29871, -200, 29871, 13, 23323, 366, 8453, 278, 8118, 310, 445, 1967, 363, 592, 29973, 319, 1799, 9047,
            13566, 29901
        ],
        [29871, 13, 4763, 29879, 411, 263, 25899, 29889, 2],
    ),
]
# fmt: on


class SentencePieceReference:
    """Llama's tokenizer.model driven directly: special tokens split out of the text first, then each piece encoded.
    legacy=False (LLaVA-1.5's folders): the start of the text gets SentencePiece's dummy-prefix space, a piece after a
    special token none. legacy=True: every piece gets it."""

    def __init__(self, model_file: str, specials: dict[str, int], legacy: bool = False):
        self.with_prefix = spm.SentencePieceProcessor(model_file=model_file)
        proto = sentencepiece_model_pb2.ModelProto.FromString(self.with_prefix.serialized_model_proto())
        proto.normalizer_spec.add_dummy_prefix = False
        self.without_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.specials, self.legacy = specials, legacy
        self.pattern = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")

    def __call__(self, text: str) -> list[int]:
        ids = [self.specials["<s>"]]
        for index, piece in enumerate(self.pattern.split(text)):
            if piece in self.specials:
                ids.append(self.specials[piece])
            elif piece:
                prefixed = self.legacy or index == 0
                ids.extend((self.with_prefix if prefixed else self.without_prefix).encode(piece))
        return ids

    def image_prompt(self, prompt: str) -> list[int]:
        """LLaVA's tokenizer_image_token, restated: each piece around <image> on its own, BOS kept once."""
        pieces = [self(piece) for piece in prompt.split(IMAGE_TOKEN)]
        ids = pieces[0]
        for piece in pieces[1:]:
            ids = ids + [LLAVA_IMAGE_INDEX] + piece[1:]
        return ids


TEXT_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
LLAVA_HF_SPECIALS = {**TEXT_SPECIALS, IMAGE_TOKEN: IMAGE_ID, "<pad>": PAD_ID}


def awkward_strings(count: int, seed: int = 0) -> list[str]:
    """Random strings over the characters tokenizers disagree on."""
    # fmt: off
    alphabet = [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2581", "a", "dog", "Is", "?", ".", "7", "é", "日",
                "\U0001f436", "</s>", "<s>", "<unk>", "ASSISTANT:", "USER:"]
    # fmt: on
    generator = random.Random(seed)
    return ["".join(generator.choices(alphabet, k=generator.randint(1, 12))) for _ in range(count)]


def with_llava_index(ids: list[int]) -> list[int]:
    return [LLAVA_IMAGE_INDEX if token == IMAGE_ID else token for token in ids]


def mismatches(expected: dict, actual) -> list:
    return [(key, actual(key), value) for key, value in expected.items() if actual(key) != value]


@pytest.fixture(scope="module")
def llama2():
    return shared_file("tokenizers", "llama2")


@pytest.fixture(scope="module")
def slow(llama2):
    """The tokenizer of an original LLaVA-1.5 folder: text vocabulary only."""
    return load_tokenizer(llama2)


@pytest.fixture(scope="module")
def llava_hf(llama2):
    """The tokenizer of a llava-hf folder: <image> and <pad> added."""
    return add_llava_tokens(load_tokenizer(llama2))


@pytest.fixture(scope="module")
def reference(llama2):
    return SentencePieceReference(f"{llama2}/tokenizer.model", TEXT_SPECIALS)


# --- the real Llama 2 tokenizer against LLaVA's transformers 4.37 ids ---


def test_every_awkward_string_has_llava_s_ids(slow):
    assert isinstance(slow, LlavaLlamaTokenizer) and slow.legacy is False
    assert mismatches(CORPUS_IDS, lambda text: slow(text).input_ids) == []
    no_bos = {text: ids[1:] for text, ids in CORPUS_IDS.items()}
    assert mismatches(no_bos, lambda text: slow(text, add_special_tokens=False).input_ids) == []


def test_the_issue_s_examples_differ_from_transformers_5_fast_tokenizer(slow, llama2):
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(llama2)
    for text in (" leading", "  two leading", "Is  there a  dog?"):
        assert slow(text).input_ids == CORPUS_IDS[text] != fast(text).input_ids


def test_legacy_true_gives_transformers_4_legacy_ids(llama2):
    legacy = load_tokenizer(llama2, legacy=True)
    assert legacy.legacy is True
    expected = {**CORPUS_IDS, **LEGACY_TRUE_IDS}
    assert mismatches(expected, lambda text: legacy(text).input_ids) == []


def test_llava_hf_tokenizer_splits_image_and_pad_as_llava_hf(llava_hf):
    image_id = llava_hf.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (image_id, llava_hf.pad_token_id, len(llava_hf)) == (IMAGE_ID, PAD_ID, 32002)
    assert (llava_hf.bos_token_id, llava_hf.eos_token_id, llava_hf.unk_token_id) == (1, 2, 0)
    expected = {**CORPUS_IDS, **LLAVA_HF_IDS}
    assert mismatches(expected, lambda text: llava_hf(text).input_ids) == []


def test_the_sentencepiece_reference_agrees_with_llava_s_ids(llama2, reference):
    """The second oracle is checked against the first before it checks anything."""
    assert mismatches(CORPUS_IDS, reference) == []
    legacy = SentencePieceReference(f"{llama2}/tokenizer.model", TEXT_SPECIALS, legacy=True)
    assert mismatches({**CORPUS_IDS, **LEGACY_TRUE_IDS}, legacy) == []
    with_image = SentencePieceReference(f"{llama2}/tokenizer.model", LLAVA_HF_SPECIALS)
    assert mismatches({**CORPUS_IDS, **LLAVA_HF_IDS}, with_image) == []


def test_random_awkward_strings_equal_sentencepiece_driven_directly(slow, llava_hf, llama2, reference):
    texts = awkward_strings(400)
    assert [(text, slow(text).input_ids) for text in texts] == [(text, reference(text)) for text in texts]
    with_image = SentencePieceReference(f"{llama2}/tokenizer.model", LLAVA_HF_SPECIALS)
    texts = [text.replace("USER:", IMAGE_TOKEN) for text in texts]
    assert [(text, llava_hf(text).input_ids) for text in texts] == [(text, with_image(text)) for text in texts]


def test_decoding_gives_llava_s_text(slow, llava_hf):
    answers = {text: ANSWER_DECODES.get(text, text) for text in CORPUS_IDS}
    for text, expected in answers.items():
        generated = llava_hf(text).input_ids[1:] + [2, PAD_ID, PAD_ID]  # an answer as generate returns it, padded
        assert llava_hf.decode(generated, skip_special_tokens=True) == expected, text
        assert slow.decode(slow(text).input_ids) == RAW_DECODES.get(text, "<s> " + text), text
    batch = [llava_hf(text).input_ids[1:] + [2] for text in answers]
    width = max(map(len, batch))
    padded = [[PAD_ID] * (width - len(ids)) + ids for ids in batch]  # left padding, as batched generation
    assert llava_hf.batch_decode(padded, skip_special_tokens=True) == list(answers.values())
    assert {token: llava_hf.decode([token]) for token in SINGLE_TOKEN_DECODES} == SINGLE_TOKEN_DECODES


def test_prompts_equal_llava_s_tokenizer_image_token(slow, llava_hf):
    for (mode, with_image, question), tail in PROMPT_TAILS.items():
        if question is None:  # a human turn that is only <image>
            conversation = Conversation.for_mode(mode)
            conversation.messages.append((USER, IMAGE_TOKEN))
            prompt = conversation.add_assistant(None).prompt()
        else:
            prompt = question_prompt(question, with_image=with_image, conv_mode=mode)
        expected = SYSTEM_IDS[mode] + tail
        for tokenizer in (slow, llava_hf):
            assert with_llava_index(tokenize_with_image(prompt, tokenizer, IMAGE_ID, 1)) == expected, prompt
        expanded = tokenize_with_image(prompt, llava_hf, IMAGE_ID, 576)
        assert expanded.count(IMAGE_ID) == 576 * with_image and len(expanded) == len(expected) + 575 * with_image


def test_every_official_pope_prompt_in_both_modes(llava_hf, reference):
    questions = set()
    for name in ("random", "popular", "adversarial"):
        with open(shared_file("pope", f"coco_pope_{name}.json")) as handle:
            questions.update(json.loads(line)["text"] for line in handle if line.strip())
    assert len(questions) == POPE_QUESTION_COUNT
    rows = []
    for mode in ("vicuna_v1", "llava_v1"):
        for question in sorted(questions):
            for suffix in ("", SHORT_ANSWER):
                prompt = question_prompt(question, suffix=suffix, conv_mode=mode)
                ids = with_llava_index(tokenize_with_image(prompt, llava_hf, IMAGE_ID, 1))
                assert ids == reference.image_prompt(prompt), prompt
                rows.append(ids)
    assert len(rows) == POPE_PROMPT_COUNT
    assert hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest() == POPE_IDS_SHA256


def test_dpo_pairs_tokenize_as_ha_dpo_trained_on(slow, llava_hf):
    from ha_dpo.data.preference_data import prompt_and_answer_ids

    for question, answer, prompt_tail, answer_ids in HADPO_PAIRS:
        for tokenizer in (slow, llava_hf):
            prompt, ours = prompt_and_answer_ids(question, answer, True, tokenizer, IMAGE_ID)
            assert (with_llava_index(prompt), ours) == (SYSTEM_IDS["vicuna_v1"] + prompt_tail, answer_ids), answer


def test_a_saved_tokenizer_reloads_identically(llava_hf, tmp_path):
    llava_hf.save_pretrained(tmp_path)
    with open(tmp_path / "tokenizer_config.json") as handle:
        saved = json.load(handle)
    # what LLaVA's own code (transformers 4.x, use_fast=False) needs to load it as it loads LLaVA's folders
    assert (saved["tokenizer_class"], saved["legacy"], saved["add_bos_token"]) == ("LlamaTokenizer", False, True)
    assert (tmp_path / "tokenizer.model").is_file()
    reloaded = load_tokenizer(str(tmp_path))
    assert isinstance(reloaded, LlavaLlamaTokenizer)
    image_id = reloaded.convert_tokens_to_ids(IMAGE_TOKEN)
    assert (len(reloaded), reloaded.pad_token_id, image_id) == (32002, PAD_ID, IMAGE_ID)
    assert (reloaded.padding_side, reloaded.model_max_length, reloaded.legacy) == ("right", 2048, False)
    texts = list(CORPUS_IDS) + awkward_strings(100, seed=1)
    assert [reloaded(text).input_ids for text in texts] == [llava_hf(text).input_ids for text in texts]
    padded = reloaded(["a", " leading"], padding=True, padding_side="left")
    assert padded.input_ids[0][0] == PAD_ID and padded.attention_mask[0][0] == 0


# --- everywhere: the tiny SentencePiece tokenizer, folders without tokenizer.model, the builder ---


@pytest.fixture(scope="module")
def llama_style_dir(tmp_path_factory, text_vocab_size):
    """A tiny SentencePiece model with Llama 2's normalizer (runs of spaces kept), the size of the tiny models."""
    directory = str(tmp_path_factory.mktemp("llama_style_tokenizer"))
    assert len(train_tiny_tokenizer(directory, remove_extra_whitespaces=False)) == text_vocab_size
    return directory


def test_a_tiny_sentencepiece_tokenizer_equals_sentencepiece_driven_directly(llama_style_dir):
    ours = load_tokenizer(llama_style_dir)
    assert isinstance(ours, LlavaLlamaTokenizer) and ours.legacy is False  # its tokenizer_config.json says so
    reference = SentencePieceReference(f"{llama_style_dir}/tokenizer.model", TEXT_SPECIALS)
    texts = awkward_strings(300, seed=2) + [" leading", "  two leading", "Is  there a  dog?"]
    assert [(text, ours(text).input_ids) for text in texts] == [(text, reference(text)) for text in texts]
    legacy = load_tokenizer(llama_style_dir, legacy=True)
    reference = SentencePieceReference(f"{llama_style_dir}/tokenizer.model", TEXT_SPECIALS, legacy=True)
    assert [(text, legacy(text).input_ids) for text in texts] == [(text, reference(text)) for text in texts]


def test_a_folder_with_only_tokenizer_json_keeps_the_fast_tokenizer(llava_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    llava_tokenizer.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.model").exists()
    for folder in (str(tmp_path), TOY_CHECKPOINT):
        loaded, auto = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
        assert not isinstance(loaded, LlavaLlamaTokenizer) and type(loaded) is type(auto)
        texts = [" leading", "Is  there a  dog?", "USER: <image>\nIs there a cat? ASSISTANT: No.</s>"]
        assert [loaded(text).input_ids for text in texts] == [auto(text).input_ids for text in texts]


def test_a_folder_without_a_tokenizer_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path))} has no tokenizer \(tokenizer.model, "):
        load_tokenizer(str(tmp_path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path / 'typo'))}: no such folder, and no tokenizer"):
        load_tokenizer(str(tmp_path / "typo"))


def test_load_pretrained_model_gives_sentencepiece_ids_for_a_llava_hf_folder(plain_llava, llama_style_dir, tmp_path):
    from post_decoder.builder import load_pretrained_model
    from post_decoder.families.llava.tiny import save_llava_hf

    folder = save_llava_hf(plain_llava, add_llava_tokens(load_tokenizer(llama_style_dir)), str(tmp_path / "llava-hf"))
    tokenizer, model, _, _ = load_pretrained_model(folder)
    assert isinstance(tokenizer, LlavaLlamaTokenizer)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    assert tokenizer.pad_token_id == model.config.pad_token_id
    added = {IMAGE_TOKEN: model.config.image_token_id, "<pad>": model.config.pad_token_id}
    reference = SentencePieceReference(f"{llama_style_dir}/tokenizer.model", {**TEXT_SPECIALS, **added})
    for text in (" leading", "Is  there a  dog?", "USER: <image> ASSISTANT:"):
        assert tokenizer(text, add_special_tokens=False).input_ids == reference(text)[1:]


def test_load_pretrained_model_gives_sentencepiece_ids_for_an_original_llava_folder(
    plain_llava, text_vocab_size, llama_style_dir, tmp_path
):
    """Needs post_decoder/original_llava.py to read its tokenizer with `load_tokenizer` too."""
    from post_decoder.builder import load_pretrained_model
    from post_decoder.families.llava.tiny import save_original_llava

    folder = save_original_llava(plain_llava, text_vocab_size, llama_style_dir, str(tmp_path / "original"), True)
    tokenizer, model, _, _ = load_pretrained_model(folder)
    assert isinstance(tokenizer, LlavaLlamaTokenizer)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id == text_vocab_size
    reference = SentencePieceReference(f"{llama_style_dir}/tokenizer.model", TEXT_SPECIALS)
    for text in (" leading", "Is  there a  dog?"):
        assert tokenizer(text).input_ids == reference(text)


def test_a_block_folder_without_its_base_names_the_argument_and_the_flag(tmp_path):
    from post_decoder.block.files import POST_DECODER_CONFIG
    from post_decoder.builder import load_pretrained_model

    (tmp_path / POST_DECODER_CONFIG).write_text("{}")
    with pytest.raises(InputError, match=r"pass the base it was trained on as model_base= \(--model-base on the"):
        load_pretrained_model(str(tmp_path))
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path / 'nowhere'))} has no config.json"):
        load_pretrained_model(str(tmp_path), model_base=str(tmp_path / "nowhere"))


def test_conversation_modes_are_the_ones_llava_has():
    assert set(CONV_MODES) == {mode for mode, _ in SYSTEM_IDS.items()}
