#!/usr/bin/env python3
"""Writes the data-pipeline fixtures of burn-rlhf (`fixtures/data/`): tiny offline tokenizers, small datasets in
every TRL format, and the token ids that TRL 1.16's OWN trainers produce from them, plus a tiny pretrained chat
checkpoint and example datasets for the crate's examples.

Nothing is downloaded: every tokenizer is trained here with the `tokenizers` library and wrapped in a transformers
`PreTrainedTokenizerFast` (saved by `save_pretrained`, reloaded by `AutoTokenizer.from_pretrained` before every use),
and every model is a transformers `LlamaForCausalLM` built from a config with seeded random weights.

What it writes (see `fixtures/data/README.md` for the full layout):

- `tokenizers/{llama3,chatml,mistral}/`: exactly the files `PreTrainedTokenizerFast.save_pretrained` writes
  (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).
    * `llama3`: byte-level BPE (Llama 3's split regex + ByteLevel), `<|begin_of_text|>` added by a
      TemplateProcessing post-processor, eos `<|eot_id|>`, no pad; chat template = TRL's copy of the Llama 3
      template (`trl/chat_templates/llama3.jinja`, byte for byte, so TRL's `get_training_chat_template` recognises it
      and swaps in `llama3_training.jinja` for `assistant_only_loss`).
    * `chatml`: byte-level BPE (Qwen2's split regex + NFC + ByteLevel), no BOS, eos `<|im_end|>`, pad
      `<|endoftext|>`, non-special added tokens `<tool_call>`/`</tool_call>`; chat template = Qwen2.5's
      (`trl/chat_templates/qwen2_5.jinja`) with the default system prompt replaced by `You are a helpful assistant.`
      (its tools block uses `tojson`).
    * `mistral`: SentencePiece-like BPE (Metaspace, byte fallback, `<unk>`=0 `<s>`=1 `</s>`=2 `<0x00>`..`<0xFF>`),
      `<s>` added by the post-processor, eos `</s>`; a Mistral/Llama-2 `[INST]` template (`{{ bos_token }}` first,
      system merged into the first user turn, `.strip()` on assistant content, `raise_exception` on non-alternating
      roles).
- `templates/chatml_training.jinja`: the chatml template with `{% generation %}` markers (TRL's
  `qwen2_5_training.jinja` with the same system prompt), passed as `SFTConfig.chat_template_path`.
- `datasets/<stem>.{jsonl,parquet}`: 3-5 rows per TRL dataset type (standard + conversational); the Parquet file is
  `datasets.Dataset.from_list(rows).to_parquet(path)` of the same rows. `datasets/malformed/*.jsonl` each hold one bad
  row; `datasets/malformed/expected.json` gives its 1-based line and the field a good error names.
- `expected/tokenizer_<name>.json`: `tokenizer(text)` (with/without special tokens), `convert_ids_to_tokens`,
  `decode`, `apply_chat_template(..., tokenize=False)` and `(..., tokenize=True)`, the special tokens, and for
  mistral the `TemplateError` message of a non-alternating conversation.
- `expected/<case>.json`: one file per trainer case. The real trainer (`DPOTrainer`, `KTOTrainer`, `SFTTrainer`,
  `GRPOTrainer`) is instantiated with a tiny random `LlamaForCausalLM` whose vocab matches the tokenizer;
  `rows` = every column of the processed `trainer.train_dataset` (DPO: `_prepare_dataset` -> `extract_prompt`,
  EOS appending, `tokenize_fn`, the keep_start filter; KTO: the same plus `unpair_preference_dataset` and
  `KL_completion_ids`; SFT: `tokenize_fn`, `build_labels`, `truncate` + filter); `collated` =
  `trainer.data_collator(rows)` where `rows` went through `trainer._remove_unused_columns` (the dataloader's view),
  all rows in one batch. GRPO (no dataset preprocessing): `rows[i].prompt_ids` = `trainer._tokenize_prompts` of the
  row's prompt, and `collated` = the left-padded `prompt_ids`/`prompt_mask` that
  `trainer._generate_and_score_completions` returns (each prompt is fed twice, as `RepeatSampler` does with
  `num_generations=2`; every other row of that batch is kept). Assistant-only SFT cases also record the
  `assistant_masks` from TRL's `_tokenize(..., return_assistant_tokens_mask=True, chat_template=trainer.chat_template)`,
  the call `tokenize_fn` makes before `build_labels` drops the column.
- `tiny_chat/`: a `LlamaForCausalLM` (hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128, tied embeddings,
  rope_theta 10000, 256 positions, vocab = the chatml tokenizer's) pretrained for a few hundred plain-torch steps on a
  synthetic ChatML corpus of yes/no questions answered 50/50 by "yes, ..." / "no, ..." templates; saved by
  `save_pretrained(safe_serialization=True)` in float32 together with the chatml tokenizer files.
- `examples/{preference,prompts}_{train,test}.jsonl`: conversational preference rows (chosen = a "no, ..." answer,
  rejected = a "yes, ..." answer to the same question: against the pretrained model's greedy "yes") and
  conversational prompt-only rows.
(`README.md` next to the fixtures is written by hand, not by this script.)

Every expected file records the versions (trl, transformers, tokenizers, torch, datasets, jinja2) and the seed.

Usage (from the repository root, in the peer venv of `shared/peers/make-venv.sh`):

    python scripts/make_data_fixtures.py [--seed 0] [--out fixtures/data]

Deterministic: the output is byte-identical on rerun with the same versions on the same machine (the tiny_chat
weights come from seeded single-threaded CPU training).
"""

import argparse
import copy
import io
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import datasets  # noqa: E402
import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()
logging.getLogger("trl").setLevel(logging.ERROR)

TRL_TEMPLATES = os.path.join(os.path.dirname(trl.__file__), "chat_templates")

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHATML_DEFAULT_SYSTEM = "You are a helpful assistant."

# Mistral-Instruct-v0.2-like [INST] template; Llama-2-like `.strip()` on the assistant turn.
MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'].strip() + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

VOCAB_TARGET = {"llama3": 600, "chatml": 600, "mistral": 360}  # BPE trainer vocab (mistral: before the 256 bytes)
MODEL_MAX_LENGTH = 2048


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------

LONG_PASSAGE = (
    "Read the passage. The village sat by a wide green valley, where a slow river ran past old stone houses. "
    "Question: what colour is the grass?"
)
LONG_SYSTEM = (
    "You are a careful assistant for a small village library. Answer in one short sentence and never invent facts."
)
LONG_GREETING = (
    " Hello there! It is a real pleasure to meet you on this fine morning, and I hope that you and your family "
    "are well, that the weather is kind to you, and that the day brings you good news."
)


def u(content):
    return {"role": "user", "content": content}


def a(content):
    return {"role": "assistant", "content": content}


def s(content):
    return {"role": "system", "content": content}


def build_datasets():
    """The rows of every dataset, by file stem."""
    d = {}
    # Preference, explicit prompt.
    d["preference_standard"] = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "Translate 'coffee' to French:", "chosen": " café", "rejected": " thé"},
        {"prompt": "日本の首都は", "chosen": "東京です。", "rejected": "大阪です。"},
        {"prompt": LONG_PASSAGE, "chosen": " Green.<|eot_id|>", "rejected": " Purple.</s>"},
        {"prompt": "Write a greeting:", "chosen": LONG_GREETING + "<|im_end|>", "rejected": " Go away."},
    ]
    d["preference_conversational"] = [
        {"prompt": [u("What color is the sky?")], "chosen": [a("It is blue.")], "rejected": [a("It is green.")]},
        {
            "prompt": [s("You are a terse assistant."), u("Say hello in Japanese.")],
            "chosen": [a("こんにちは")],
            "rejected": [a(" Hello")],
        },
        {
            "prompt": [u("What is 2+2?"), a("4."), u("And times 3?")],
            "chosen": [a("12.")],
            "rejected": [a("7.")],
        },
        {"prompt": [s("You are a careful assistant."), u(LONG_PASSAGE)], "chosen": [a("Green.")],
         "rejected": [a("Purple.")]},
        {
            "prompt": [u("Write a greeting, please.")],
            "chosen": [a(LONG_GREETING.strip() + " See you soon, and take care on the road home.")],
            "rejected": [a("No.")],
        },
    ]
    # Preference, implicit prompt (TRL's extract_prompt finds it).
    d["preference_implicit_standard"] = [
        {"chosen": "The capital of France is Paris.", "rejected": "The capital of France is Lyon."},
        {"chosen": "Q: Is the answer yes? A: yes", "rejected": "Q: Is the answer yes? A: yet"},
        {"chosen": "Un café, s'il vous plaît.", "rejected": "Un thé, s'il vous plaît."},
        {"chosen": "Say something nice: Okay.</s>", "rejected": "Say something nice: No.<|eot_id|>"},
    ]
    d["preference_implicit_conversational"] = [
        {
            "chosen": [u("What color is the sky?"), a("It is blue.")],
            "rejected": [u("What color is the sky?"), a("It is green.")],
        },
        {
            "chosen": [s("You are a terse assistant."), u("Name a café drink."), a("Espresso.")],
            "rejected": [s("You are a terse assistant."), u("Name a café drink."), a(" Milk")],
        },
        {
            "chosen": [u("What is 2+2?"), a("4."), u("And times 3?"), a("12.")],
            "rejected": [u("What is 2+2?"), a("4."), u("And times 3?"), a("7.")],
        },
    ]
    # Unpaired preference.
    d["unpaired_standard"] = [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {"prompt": "The sky is", "completion": " green.", "label": False},
        {"prompt": "Translate 'coffee' to French:", "completion": " café<|eot_id|>", "label": True},
        {"prompt": "日本の首都は", "completion": "大阪です。</s>", "label": False},
        {"prompt": "Write a greeting:", "completion": " Hello there!<|im_end|>", "label": True},
    ]
    d["unpaired_conversational"] = [
        {"prompt": [u("What color is the sky?")], "completion": [a("It is blue.")], "label": True},
        {"prompt": [u("What color is the sky?")], "completion": [a("It is green.")], "label": False},
        {
            "prompt": [s("You are a terse assistant."), u("Say hello in Japanese.")],
            "completion": [a("こんにちは")],
            "label": True,
        },
        {"prompt": [u("What is 2+2?"), a("4."), u("And times 3?")], "completion": [a(" 7.")], "label": False},
    ]
    # Prompt-only.
    d["prompt_only_standard"] = [
        {"prompt": "The sky is"},
        {"prompt": "日本の首都は"},
        {"prompt": " A prompt with a leading space"},
        {"prompt": "Café au lait or tea? Answer:"},
    ]
    d["prompt_only_conversational"] = [
        {"prompt": [u("What color is the sky?")]},
        {"prompt": [s("You are a terse assistant."), u("Say hello in Japanese.")]},
        {"prompt": [u("What is 2+2?"), a("4."), u("And times 3?")]},
        {"prompt": [u("Un café, s'il vous plaît.")]},
    ]
    # Prompt-completion.
    d["prompt_completion_standard"] = [
        {"prompt": "The sky is", "completion": " blue."},
        {"prompt": "Translate 'coffee' to French:", "completion": " café<|eot_id|>"},
        {"prompt": "日本の首都は", "completion": "東京です。</s>"},
        {"prompt": LONG_PASSAGE, "completion": " Green."},
        {"prompt": "Write a greeting:", "completion": LONG_GREETING + "<|im_end|>"},
    ]
    d["prompt_completion_conversational"] = [
        {"prompt": [u("What color is the sky?")], "completion": [a("It is blue.")]},
        {"prompt": [s("You are a terse assistant."), u("Say hello in Japanese.")], "completion": [a("こんにちは")]},
        {"prompt": [u("What is 2+2?"), a("4."), u("And times 3?")], "completion": [a(" 12.")]},
        {"prompt": [u("Write a greeting, please.")], "completion": [a(LONG_GREETING.strip())]},
    ]
    # Language modeling.
    d["language_modeling_standard"] = [
        {"text": "The sky is blue."},
        {"text": " A text with a leading space and a café."},
        {"text": "日本の首都は東京です。<|eot_id|>"},
        {"text": "Hello there!<|im_end|>"},
        {"text": "The end.</s>"},
    ]
    d["language_modeling_conversational"] = [
        {"messages": [u("What color is the sky?"), a("It is blue.")]},
        {"messages": [s("You are a terse assistant."), u("Say hello in Japanese."), a("こんにちは")]},
        {"messages": [u("What is 2+2?"), a("4."), u("And times 3?"), a(" 12.")]},
        {"messages": [u("Un café, s'il vous plaît."), a("Voilà, un café.")]},
    ]
    return d


MALFORMED = {
    # file stem: (rows or raw lines, bad line (1-based), field, what is wrong)
    "invalid_json": (
        [
            json.dumps({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, ensure_ascii=False),
            json.dumps({"prompt": "The sun is", "chosen": " hot.", "rejected": " cold."}, ensure_ascii=False),
            '{"prompt": "The sea is", "chosen": " wet.", "rejected": ',
            json.dumps({"prompt": "The grass is", "chosen": " green.", "rejected": " blue."}, ensure_ascii=False),
        ],
        3,
        None,
        "line 3 is not valid JSON (truncated object)",
    ),
    "missing_rejected": (
        [
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {"prompt": "The sun is", "chosen": " hot."},
            {"prompt": "The grass is", "chosen": " green.", "rejected": " blue."},
        ],
        2,
        "rejected",
        "preference row without `rejected`",
    ),
    "label_string": (
        [
            {"prompt": "The sky is", "completion": " blue.", "label": True},
            {"prompt": "The sky is", "completion": " green.", "label": False},
            {"prompt": "The sun is", "completion": " hot.", "label": True},
            {"prompt": "The sun is", "completion": " cold.", "label": "false"},
        ],
        4,
        "label",
        "`label` is the string \"false\", not a JSON boolean",
    ),
    "message_without_role": (
        [
            {"prompt": [u("What color is the sky?")], "chosen": [a("It is blue.")], "rejected": [a("It is green.")]},
            {
                "prompt": [u("What color is grass?")],
                "chosen": [{"content": "It is green."}],
                "rejected": [a("It is blue.")],
            },
            {"prompt": [u("Is snow cold?")], "chosen": [a("Yes.")], "rejected": [a("No.")]},
        ],
        2,
        "role",
        "the message chosen[0] has no `role`",
    ),
    "content_not_string": (
        [
            {"prompt": [u("What is 2+2?")], "completion": [a("4.")]},
            {"prompt": [u("What is 3+3?")], "completion": [a("6.")]},
            {"prompt": [u("What is 4+4?")], "completion": [{"role": "assistant", "content": 8}]},
        ],
        3,
        "content",
        "completion[0].content is a number, not a string",
    ),
    "wrong_format": (
        [
            {"prompt": "The sky is", "completion": " blue."},
            {"prompt": "The sun is", "completion": " hot."},
            {"text": "The grass is green."},
            {"prompt": "The sea is", "completion": " wet."},
        ],
        3,
        "completion",
        "a language-modeling row (`text`) in a prompt-completion file: `prompt`/`completion` missing",
    ),
}


# Where in the row the bad field sits (null: the row itself / a top-level key).
MALFORMED_PATHS = {
    "missing_rejected": "rejected",
    "label_string": "label",
    "message_without_role": "chosen[0].role",
    "content_not_string": "completion[0].content",
    "wrong_format": "completion",
}


# ----------------------------------------------------------------------------------------------------------------
# Tiny-chat corpus (also part of the tokenizer training corpus)
# ----------------------------------------------------------------------------------------------------------------

NOUNS = ["sky", "sea", "grass", "sun", "moon", "cat", "dog", "apple", "river", "road", "house", "tree", "snow",
         "fire", "book", "car", "lake", "bread", "stone", "cloud"]
ADJS = ["blue", "green", "red", "big", "small", "hot", "cold", "old", "new", "fast", "slow", "heavy", "bright",
        "dark", "soft", "loud"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "frog", "duck"]
VERBS = ["fly", "swim", "run", "jump", "sing", "read", "climb", "dance"]
FOODS = ["tea", "coffee", "rice", "bread", "apples", "cheese", "soup", "milk", "honey", "eggs"]
YES_ANSWERS = ["yes, of course.", "yes, I think so.", "yes, that is right.", "yes, it is true."]
NO_ANSWERS = ["no, not at all.", "no, I do not think so.", "no, that is wrong.", "no, it is not true."]


def all_questions():
    qs = [f"Is the {n} {j}?" for n in NOUNS for j in ADJS]
    qs += [f"Can a {x} {v}?" for x in ANIMALS for v in VERBS]
    qs += [f"Do you like {f}?" for f in FOODS]
    return qs


def split_questions(seed):
    qs = all_questions()
    rng = random.Random(seed + 1)
    rng.shuffle(qs)
    test = qs[:16]
    train_pool = qs[16:]
    return train_pool, test


ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model learns to answer short questions with a simple yes or no.",
    "The weather was cold in the morning, but the afternoon was warm and bright.",
    "She read the book twice before she wrote her answer in a clear and careful hand.",
    "There is a house by the river, and the road to it is old and slow.",
    "Numbers like 12, 345 and 6789 appear in text, and so do 3.14 and 2+2=4.",
    "Hello world! How are you today? I am fine, thank you.",
    "Please translate the sentence into French and Japanese.",
    "Un café au lait, une crème brûlée et un thé, s'il vous plaît. Voilà, merci.",
    "日本の首都は東京です。大阪は大きい町です。こんにちは、日本語のテキスト。",
    "The assistant answers the user, and the system message sets the rules.",
    "You may call one or more functions to assist with the user query.",
    "For each function call, return a json object with function name and arguments.",
    "Conversation roles must alternate between the user and the assistant.",
    "multiple   spaces\n\nnew lines\tand tabs",
]


def tokenizer_corpus(dsets, seed):
    texts = list(ENGLISH)

    def walk(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(dsets)
    walk([v[0] for v in MALFORMED.values()])
    texts += [LONG_SYSTEM, LONG_PASSAGE, LONG_GREETING, CHATML_DEFAULT_SYSTEM, "system", "user", "assistant",
              "[INST]", "[/INST]"]
    texts += all_questions() + YES_ANSWERS + NO_ANSWERS
    # Weight the tiny-chat material so its words become single tokens.
    texts += (YES_ANSWERS + NO_ANSWERS + [CHATML_DEFAULT_SYSTEM]) * 20
    return texts


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------


def train_bytelevel(corpus, split_regex, vocab_size, normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def make_llama3(corpus):
    tok = train_bytelevel(corpus, LLAMA3_SPLIT, VOCAB_TARGET["llama3"])
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok.add_special_tokens(specials)
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    with open(os.path.join(TRL_TEMPLATES, "llama3.jinja"), encoding="utf-8") as f:
        template = f.read()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = template
    return fast


def chatml_template(training=False):
    name = "qwen2_5_training.jinja" if training else "qwen2_5.jinja"
    with open(os.path.join(TRL_TEMPLATES, name), encoding="utf-8") as f:
        template = f.read()
    assert template.count(QWEN_DEFAULT_SYSTEM) == 2
    template = template.replace(QWEN_DEFAULT_SYSTEM, CHATML_DEFAULT_SYSTEM)
    if training:
        # Drop TRL's leading comment so the file is the chatml template plus generation markers only.
        assert template.startswith("{#-")
        template = template[template.index("-#}") + 3 :].lstrip("\n")
    return template


def make_chatml(corpus):
    tok = train_bytelevel(corpus, QWEN2_SPLIT, VOCAB_TARGET["chatml"], normalizer=normalizers.NFC())
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([tokenizers.AddedToken("<tool_call>", special=False), tokenizers.AddedToken("</tool_call>", special=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chatml_template()
    return fast


def make_mistral(corpus):
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET["mistral"], min_frequency=2, show_progress=False, special_tokens=specials
    )
    tok.train_from_iterator(corpus, trainer)
    trained = json.loads(tok.to_str())["model"]
    # Llama-2 layout: <unk>, <s>, </s>, the 256 byte-fallback tokens, then the learned pieces.
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    final = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    final.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    final.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    final.add_special_tokens(specials)
    final.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=final,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = MISTRAL_TEMPLATE
    return fast


TOKENIZER_BUILDERS = {"llama3": make_llama3, "chatml": make_chatml, "mistral": make_mistral}


class Ctx:
    def __init__(self, out, seed):
        self.out = out
        self.seed = seed
        self.versions = {
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "datasets": datasets.__version__,
            "jinja2": jinja2.__version__,
            "python": sys.version.split()[0],
        }

    def tok_dir(self, name):
        return os.path.join(self.out, "tokenizers", name)

    def tokenizer(self, name):
        """A fresh copy (trainers mutate pad_token)."""
        return AutoTokenizer.from_pretrained(self.tok_dir(name))

    def header(self):
        return {"versions": self.versions, "seed": self.seed}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_dumps(obj, 0))
        f.write("\n")


def _dumps(obj, level):
    pad = " " * level
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k, ensure_ascii=False)}: {_dumps(v, level + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            return json.dumps(obj, ensure_ascii=False)
        if all(isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x) for x in obj):
            return "[\n" + ",\n".join(pad + " " + json.dumps(x, ensure_ascii=False) for x in obj) + "\n" + pad + "]"
        return "[\n" + ",\n".join(pad + " " + _dumps(x, level + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def build_tokenizers(ctx, corpus):
    for name, builder in TOKENIZER_BUILDERS.items():
        fast = builder(corpus)
        d = ctx.tok_dir(name)
        shutil.rmtree(d, ignore_errors=True)
        fast.save_pretrained(d)
    tdir = os.path.join(ctx.out, "templates")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "chatml_training.jinja"), "w", encoding="utf-8") as f:
        f.write(chatml_template(training=True))


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer expectations
# ----------------------------------------------------------------------------------------------------------------

TOKENIZER_STRINGS = [
    "Hello world",
    "The sky is blue.",
    " leading space",
    "Café au lait, crème brûlée",
    "日本の首都は東京です。",
    "multiple   spaces\n\nnew lines\tand tabs",
    "numbers 12345 and 3.14",
    "special <|eot_id|> <|im_end|> </s> <s> inside",
    "",
]

CONVERSATIONS = {
    "single_user": [u("What color is the sky?")],
    "user_assistant": [u("What color is the sky?"), a("It is blue.")],
    "system_user": [s("You are a terse assistant."), u("Say hello in Japanese.")],
    "system_user_assistant": [s("You are a terse assistant."), u("Say hello in Japanese."), a("こんにちは")],
    "multi_turn": [u("What is 2+2?"), a("4."), u("And times 3?"), a(" 12. ")],
    "multi_turn_open": [u("What is 2+2?"), a("4."), u("And times 3?")],
    "whitespace_content": [u("  padded question  "), a("\n answer with spaces \n")],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now> & later, in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City, e.g. \"Paris\" or 'Tōkyō'"}},
                "required": ["city"],
            },
        },
    }
]


def tokenizer_expectations(ctx):
    for name in TOKENIZER_BUILDERS:
        tok = ctx.tokenizer(name)
        d = ctx.tok_dir(name)
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
        tj = json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
        res = ctx.header()
        res["tokenizer"] = name
        res["files"] = sorted(os.listdir(d))
        res["class"] = type(tok).__name__
        res["len"] = len(tok)
        res["vocab_size"] = tok.vocab_size
        res["special_tokens"] = {
            k: {"token": getattr(tok, k), "id": getattr(tok, k + "_id")}
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        res["tokenizer_config_keys"] = sorted(cfg)
        res["added_tokens"] = [
            {"id": t["id"], "content": t["content"], "special": t["special"]} for t in tj["added_tokens"]
        ]
        res["post_processor"] = tj["post_processor"]
        res["chat_template_file"] = "chat_template.jinja" if os.path.exists(os.path.join(d, "chat_template.jinja")) else None
        res["chat_template_in_tokenizer_config"] = "chat_template" in cfg
        enc = []
        for text in TOKENIZER_STRINGS:
            ids = tok(text)["input_ids"]
            ids_ns = tok(text, add_special_tokens=False)["input_ids"]
            enc.append(
                {
                    "text": text,
                    "input_ids": ids,
                    "input_ids_no_special": ids_ns,
                    "tokens": tok.convert_ids_to_tokens(ids),
                    "decode": tok.decode(ids),
                    "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
                }
            )
        res["encode"] = enc
        # decode of some hand-picked ids: specials, a byte-level piece, and a run of ordinary ids
        ids = list(range(0, 12)) + [len(tok) - 1, len(tok) - 2]
        res["decode"] = [
            {"ids": ids, "text": tok.decode(ids), "text_skip_special": tok.decode(ids, skip_special_tokens=True)},
            {"ids": enc[4]["input_ids_no_special"][:3], "text": tok.decode(enc[4]["input_ids_no_special"][:3])},
        ]
        chats = []
        for cname, msgs in CONVERSATIONS.items():
            for agp in (False, True):
                entry = {"name": cname, "messages": msgs, "add_generation_prompt": agp}
                try:
                    entry["rendered"] = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
                    entry["input_ids"] = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp)[
                        "input_ids"
                    ]
                except Exception as e:  # noqa: BLE001
                    entry["error"] = {"type": type(e).__name__, "message": str(e)}
                chats.append(entry)
        # continue_final_message, as TRL's apply_chat_template uses it for assistant-final prompts
        msgs = [u("What color is the sky?"), a("It is")]
        try:
            r = tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
            chats.append({"name": "continue_final_message", "messages": msgs, "continue_final_message": True,
                          "rendered": r})
        except Exception as e:  # noqa: BLE001
            chats.append({"name": "continue_final_message", "messages": msgs, "continue_final_message": True,
                          "error": {"type": type(e).__name__, "message": str(e)}})
        if name == "chatml":
            msgs = [u("Weather in Paris?")]
            chats.append({"name": "tools", "messages": msgs, "tools": TOOLS, "add_generation_prompt": True,
                          "rendered": tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False,
                                                              add_generation_prompt=True)})
            msgs = [u("Weather in Paris?"),
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                      "arguments": {"city": "Paris <FR> & 東京"}}}]},
                    {"role": "tool", "name": "get_weather", "content": "21 °C"}]
            chats.append({"name": "tool_calls", "messages": msgs, "add_generation_prompt": True,
                          "rendered": tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)})
        if name == "mistral":
            for cname, msgs in {
                "non_alternating": [u("Hi"), u("Hello again")],
                "assistant_first": [a("I start."), u("Hi")],
                "tool_role": [u("Hi"), {"role": "tool", "content": "x"}],
            }.items():
                entry = {"name": cname, "messages": msgs, "add_generation_prompt": False}
                try:
                    entry["rendered"] = tok.apply_chat_template(msgs, tokenize=False)
                except Exception as e:  # noqa: BLE001
                    entry["error"] = {"type": type(e).__name__, "message": str(e)}
                chats.append(entry)
        res["chat_template"] = chats
        dump(os.path.join(ctx.out, "expected", f"tokenizer_{name}.json"), res)


# ----------------------------------------------------------------------------------------------------------------
# Trainer cases
# ----------------------------------------------------------------------------------------------------------------


def tiny_model(tok, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


COMMON_ARGS = dict(report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                   logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)


def to_plain(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def dropped_rows(in_rows, out_rows):
    """Indices of input rows whose `prompt` no longer appears in the processed dataset (prompts are unique)."""
    out_prompts = [r.get("prompt") for r in out_rows]
    return [i for i, r in enumerate(in_rows) if "prompt" in r and r["prompt"] not in out_prompts]


def run_case(ctx, dsets, case):
    name, tname, stem, kind, config = case["name"], case["tokenizer"], case["dataset"], case["trainer"], case["config"]
    tok = ctx.tokenizer(tname)
    rows_in = dsets[stem]
    ds = Dataset.from_list(copy.deepcopy(rows_in))
    model = tiny_model(tok, ctx.seed)
    tmp = tempfile.mkdtemp(prefix="trl_case_")
    res = {"name": name, "tokenizer": tname, "dataset": stem, "trainer": kind, "config": config}
    res.update(ctx.header())
    res["config_common"] = {k: v for k, v in COMMON_ARGS.items()}
    try:
        if kind == "dpo":
            args = trl.DPOConfig(output_dir=tmp, seed=ctx.seed, **COMMON_ARGS, **config)
            trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                                     processing_class=tok)
        elif kind == "kto":
            args = trl.KTOConfig(output_dir=tmp, seed=ctx.seed, **COMMON_ARGS, **config)
            trainer = trl.KTOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                                     processing_class=tok)
        elif kind == "sft":
            cfg = dict(config)
            if "chat_template_path" in cfg:
                cfg["chat_template_path"] = os.path.join(ctx.out, cfg["chat_template_path"])
            args = trl.SFTConfig(output_dir=tmp, seed=ctx.seed, **COMMON_ARGS, **cfg)
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        elif kind == "grpo":
            return run_grpo(ctx, res, tok, model, ds, rows_in, config, tmp)
        else:
            raise ValueError(kind)
        out = trainer.train_dataset
        rows = [to_plain(out[i]) for i in range(len(out))]
        res["num_rows_in"] = len(rows_in)
        res["num_rows_out"] = len(rows)
        if "prompt" in rows_in[0] and kind == "dpo" or (kind == "sft" and "prompt" in rows_in[0]):
            res["dropped_rows"] = dropped_rows(rows_in, rows)
        res["pad_token"] = trainer._tokenizer.pad_token
        res["pad_token_id"] = trainer._tokenizer.pad_token_id
        res["eos_token"] = trainer._tokenizer.eos_token
        if kind == "sft":
            res["completion_only_loss"] = trainer.completion_only_loss
            res["padding_free"] = trainer.padding_free
            if trainer.chat_template is not None:
                res["training_chat_template"] = trainer.chat_template
            if config.get("assistant_only_loss"):
                # The assistant mask tokenize_fn computes (build_labels then folds it into `labels` and drops it).
                from trl.data_utils import _tokenize

                for r_in, r_out in zip(rows_in, rows):
                    msgs = r_in["messages"] if "messages" in r_in else r_in["prompt"] + r_in["completion"]
                    r_out["assistant_masks"] = _tokenize(
                        tok, msgs, return_assistant_tokens_mask=True, chat_template=trainer.chat_template, tools=None
                    )["assistant_masks"]
        if kind == "kto":
            res["calculate_KL"] = trainer.calculate_KL
        res["rows"] = rows
        coll_ds = trainer._remove_unused_columns(out, description="train")
        coll_rows = [coll_ds[i] for i in range(len(coll_ds))]
        res["collator"] = type(trainer.data_collator).__name__
        res["collated_columns"] = coll_ds.column_names
        res["collated"] = to_plain(trainer.data_collator(coll_rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def yes_reward(completions, **kwargs):
    return [1.0 for _ in completions]


def run_grpo(ctx, res, tok, model, ds, rows_in, config, tmp):
    try:
        args = trl.GRPOConfig(output_dir=tmp, seed=ctx.seed, **COMMON_ARGS, **config)
        trainer = trl.GRPOTrainer(model=model, reward_funcs=yes_reward, args=args, train_dataset=ds,
                                  processing_class=tok)
        prompts = [r["prompt"] for r in rows_in]
        prompt_ids, _, _ = trainer._tokenize_prompts(copy.deepcopy(prompts))
        res["num_rows_in"] = len(rows_in)
        res["pad_token"] = trainer._tokenizer.pad_token
        res["pad_token_id"] = trainer._tokenizer.pad_token_id
        res["eos_token"] = trainer._tokenizer.eos_token
        res["rows"] = [{"prompt": p, "prompt_ids": to_plain(ids)} for p, ids in zip(prompts, prompt_ids)]
        # The trainer's own path: RepeatSampler feeds every prompt num_generations times in a row.
        inputs = [copy.deepcopy(r) for r in rows_in for _ in range(2)]
        trainer.model.train()
        torch.manual_seed(ctx.seed)
        out = trainer._generate_and_score_completions(inputs)
        res["collated"] = {
            "prompt_ids": to_plain(out["prompt_ids"][::2]),
            "prompt_mask": to_plain(out["prompt_mask"][::2]),
        }
        res["collated_note"] = (
            "rows 0, 2, 4, ... of the prompt_ids/prompt_mask that GRPOTrainer._generate_and_score_completions returns "
            "for the batch [p0, p0, p1, p1, ...] (num_generations=2); left padding with pad_token_id"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def case_list():
    cases = []
    toks = ["llama3", "chatml", "mistral"]
    # DPO
    for t in toks:
        for stem in ["preference_standard", "preference_conversational", "preference_implicit_standard",
                     "preference_implicit_conversational"]:
            cases.append({"name": f"dpo_{stem}_{t}", "tokenizer": t, "dataset": stem, "trainer": "dpo",
                          "config": {"max_length": None}})
    # DPO truncation: max_length is filled in later (auto-chosen, see `choose_dpo_max_length`)
    for stem in ["preference_standard", "preference_conversational"]:
        for mode in ["keep_start", "keep_end"]:
            cases.append({"name": f"dpo_{stem}_llama3_truncate_{mode}", "tokenizer": "llama3", "dataset": stem,
                          "trainer": "dpo", "config": {"max_length": "auto", "truncation_mode": mode}})
    # KTO
    for t in toks:
        for stem in ["unpaired_standard", "unpaired_conversational"]:
            cases.append({"name": f"kto_{stem}_{t}", "tokenizer": t, "dataset": stem, "trainer": "kto",
                          "config": {"max_length": None}})
    cases.append({"name": "kto_from_paired_preference_standard_chatml", "tokenizer": "chatml",
                  "dataset": "preference_standard", "trainer": "kto", "config": {"max_length": None}})
    cases.append({"name": "kto_from_paired_preference_implicit_conversational_llama3", "tokenizer": "llama3",
                  "dataset": "preference_implicit_conversational", "trainer": "kto", "config": {"max_length": None}})
    # SFT
    for t in toks:
        for stem in ["prompt_completion_standard", "prompt_completion_conversational"]:
            for col in (True, False):
                cases.append({"name": f"sft_{stem}_{t}_col_{str(col).lower()}", "tokenizer": t, "dataset": stem,
                              "trainer": "sft", "config": {"max_length": None, "completion_only_loss": col}})
        for stem in ["language_modeling_standard", "language_modeling_conversational"]:
            cases.append({"name": f"sft_{stem}_{t}", "tokenizer": t, "dataset": stem, "trainer": "sft",
                          "config": {"max_length": None}})
    cases.append({"name": "sft_prompt_completion_standard_llama3_truncate", "tokenizer": "llama3",
                  "dataset": "prompt_completion_standard", "trainer": "sft",
                  "config": {"max_length": "auto", "completion_only_loss": True}})
    cases.append({"name": "sft_language_modeling_conversational_chatml_truncate", "tokenizer": "chatml",
                  "dataset": "language_modeling_conversational", "trainer": "sft", "config": {"max_length": 16}})
    cases.append({"name": "sft_language_modeling_standard_llama3_padding_free", "tokenizer": "llama3",
                  "dataset": "language_modeling_standard", "trainer": "sft",
                  "config": {"max_length": None, "padding_free": True}})
    for stem in ["language_modeling_conversational", "prompt_completion_conversational"]:
        cases.append({"name": f"sft_{stem}_llama3_assistant_only", "tokenizer": "llama3", "dataset": stem,
                      "trainer": "sft", "config": {"max_length": None, "assistant_only_loss": True}})
        cases.append({"name": f"sft_{stem}_chatml_assistant_only", "tokenizer": "chatml", "dataset": stem,
                      "trainer": "sft", "config": {"max_length": None, "assistant_only_loss": True,
                                                   "chat_template_path": "templates/chatml_training.jinja"}})
    # GRPO
    for t in toks:
        for stem in ["prompt_only_standard", "prompt_only_conversational"]:
            n = len(build_datasets()[stem])
            cases.append({"name": f"grpo_{stem}_{t}", "tokenizer": t, "dataset": stem, "trainer": "grpo",
                          "config": {"num_generations": 2, "max_completion_length": 3,
                                     "per_device_train_batch_size": 2 * n}})
    return cases


def run_cases(ctx, dsets):
    results = {}
    names = []
    for case in case_list():
        case = copy.deepcopy(case)
        if case["trainer"] != "grpo":
            # KTO rotates completions within batches of this size to build KL_completion_ids
            case["config"]["per_device_train_batch_size"] = 2
        if case["config"].get("max_length") == "auto":
            case["config"]["max_length"] = choose_max_length(results, case)
        res = run_case(ctx, dsets, case)
        results[case["name"]] = res
        dump(os.path.join(ctx.out, "expected", case["name"] + ".json"), res)
        names.append(case["name"])
        print(f"  {case['name']}: {res.get('num_rows_out', res.get('num_rows_in'))} rows", flush=True)
    return results


def choose_max_length(results, case):
    """max_length = the prompt length of the row with the longest prompt (so keep_start drops exactly that row),
    checked to be longer than every other prompt and shorter than some other row's prompt+completion (so truncation
    really cuts a kept row)."""
    stem, t = case["dataset"], case["tokenizer"]
    if case["trainer"] == "dpo":
        base = results[f"dpo_{stem}_{t}"]
        plens = [len(r["prompt_ids"]) for r in base["rows"]]
        totals = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in base["rows"]]
    else:
        base = results[f"sft_{stem}_{t}_col_true"]
        plens = [sum(1 for x in r["labels"] if x == -100) for r in base["rows"]]
        totals = [len(r["input_ids"]) for r in base["rows"]]
    longest = max(range(len(plens)), key=lambda i: plens[i])
    m = plens[longest]
    assert all(p < m for i, p in enumerate(plens) if i != longest), plens
    assert any(tot > m for i, tot in enumerate(totals) if i != longest), (plens, totals)
    return m


# ----------------------------------------------------------------------------------------------------------------
# Datasets on disk
# ----------------------------------------------------------------------------------------------------------------


def write_datasets(ctx, dsets):
    d = os.path.join(ctx.out, "datasets")
    os.makedirs(d, exist_ok=True)
    for stem, rows in dsets.items():
        with open(os.path.join(d, stem + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        Dataset.from_list(rows).to_parquet(os.path.join(d, stem + ".parquet"))
    md = os.path.join(d, "malformed")
    os.makedirs(md, exist_ok=True)
    expected = {}
    for stem, (rows, line, field, why) in MALFORMED.items():
        with open(os.path.join(md, stem + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
        expected[stem + ".jsonl"] = {"line": line, "field": field, "path": MALFORMED_PATHS.get(stem), "problem": why}
    write_json(os.path.join(md, "expected.json"), expected)


# ----------------------------------------------------------------------------------------------------------------
# Tiny chat checkpoint
# ----------------------------------------------------------------------------------------------------------------


def make_tiny_chat(ctx, steps=600):
    tok = ctx.tokenizer("chatml")
    train_pool, test_q = split_questions(ctx.seed)
    rng = random.Random(ctx.seed + 2)

    # Example datasets: 64 train / 16 test questions (test questions never appear in the pretraining corpus).
    ex_train = train_pool[:64]
    ed = os.path.join(ctx.out, "examples")
    os.makedirs(ed, exist_ok=True)

    # The preference goes against the pretrained model's greedy habit (it answers "yes"): chosen = a "no, ..."
    # answer, rejected = a "yes, ..." answer, so that training visibly moves the model.
    def pref_rows(qs):
        rows = []
        for q in qs:
            yes, no = rng.choice(YES_ANSWERS), rng.choice(NO_ANSWERS)
            rows.append({"prompt": [u(q)], "chosen": [a(no)], "rejected": [a(yes)]})
        return rows

    for fname, rows in [
        ("preference_train.jsonl", pref_rows(ex_train)),
        ("preference_test.jsonl", pref_rows(test_q)),
        ("prompts_train.jsonl", [{"prompt": [u(q)]} for q in train_pool[64:128]]),
        ("prompts_test.jsonl", [{"prompt": [u(q)]} for q in test_q]),
    ]:
        with open(os.path.join(ed, fname), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    # Pretraining corpus: every training question, answered yes or no at random (50/50), fresh draw per step.
    torch.manual_seed(ctx.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 30) * max(0.1, 1 - i / steps))
    batch = 32
    log = []
    model.train()
    cache = {}

    def encode(q, ans):
        key = (q, ans)
        if key not in cache:
            cache[key] = tok.apply_chat_template([u(q), a(ans)], tokenize=True)["input_ids"]
        return cache[key]

    for step in range(steps):
        seqs = []
        for _ in range(batch):
            q = rng.choice(train_pool)
            ans = rng.choice(YES_ANSWERS) if rng.random() < 0.5 else rng.choice(NO_ANSWERS)
            seqs.append(encode(q, ans))
        n = max(len(x) for x in seqs)
        ids = torch.full((batch, n), tok.pad_token_id)
        labels = torch.full((batch, n), -100)
        mask = torch.zeros((batch, n), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.append((step, round(loss.item(), 4)))
            print(f"  tiny_chat step {step}: loss {loss.item():.4f}", flush=True)
    model.eval()
    d = os.path.join(ctx.out, "tiny_chat")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    torch.set_num_threads(threads)
    return log, test_q


def check_tiny_chat(ctx, test_q):
    d = os.path.join(ctx.out, "tiny_chat")
    tok = AutoTokenizer.from_pretrained(d)
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    samples = []
    for q in test_q[:6] + ["Is the sky blue?", "Can a fish fly?"]:
        enc = tok.apply_chat_template([u(q)], add_generation_prompt=True, tokenize=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        samples.append({"question": q, "greedy": text})
    # sampled answers: fraction starting with "yes"
    torch.manual_seed(ctx.seed)
    n_yes = n_no = 0
    for q in test_q:
        enc = tok.apply_chat_template([u(q)], add_generation_prompt=True, tokenize=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=12, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=8)
        for row in out:
            t = tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True)
            n_yes += t.startswith("yes")
            n_no += t.startswith("no")
    return samples, {"sampled": 8 * len(test_q), "starts_with_yes": n_yes, "starts_with_no": n_no}


# ----------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="fixtures/data")
    ap.add_argument("--skip-tiny-chat", action="store_true", help="leave tiny_chat/ and examples/ as they are")
    ap.add_argument("--tiny-chat-steps", type=int, default=600)
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    ctx = Ctx(args.out, args.seed)
    os.makedirs(args.out, exist_ok=True)
    shutil.rmtree(os.path.join(args.out, "expected"), ignore_errors=True)

    dsets = build_datasets()
    print("datasets", flush=True)
    write_datasets(ctx, dsets)
    print("tokenizers", flush=True)
    build_tokenizers(ctx, tokenizer_corpus(dsets, args.seed))
    tokenizer_expectations(ctx)
    print("trainer cases", flush=True)
    run_cases(ctx, dsets)
    if not args.skip_tiny_chat:
        print("tiny_chat", flush=True)
        log, test_q = make_tiny_chat(ctx, args.tiny_chat_steps)
        samples, stats = check_tiny_chat(ctx, test_q)
        info = ctx.header()
        info["train_loss"] = log
        info["greedy_samples"] = samples
        info["sampling_check"] = stats
        dump(os.path.join(args.out, "examples", "tiny_chat_check.json"), info)
        for smp in samples:
            print(f"  {smp['question']!r} -> {smp['greedy']!r}")
        print(f"  sampled: {stats}")


if __name__ == "__main__":
    main()
