#!/usr/bin/env python3
"""Writes `fixtures/data/expected/template_features.json`: one chat template that exercises the
Jinja features Hub chat templates use (namespace, loop variables, slicing, negative indexing,
Python string and dict methods, tests, filters such as selectattr/map/join/format/tojson with
indent, `~` and `*` on strings, defined/undefined special tokens), rendered by transformers'
own environment (`transformers.utils.chat_template_utils.render_jinja_template`) with `tools`
and `add_generation_prompt`. `tests/parity/data.rs` renders it with the crate's `ChatTemplate`
and compares the text exactly.

    python scripts/make_template_fixture.py [--seed 0] [--out fixtures/data/expected/template_features.json]

The output is deterministic (no random draw); `--seed` is accepted and recorded like the other
fixture generators'.
"""

import argparse
import json

TEMPLATE = r"""{%- set ns = namespace(last_user=-1, found=false) %}
{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- if messages[0].role == 'system' %}{{ '<sys>' + messages[0].content | trim + '</sys>\n' }}{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}
{%- for m in rest %}
  {%- if m.content is string and m.content.startswith('!') %}{% set ns.found = true %}{% endif %}
  {%- if m.role == 'assistant' and '</think>' in m.content %}
{{ '<a>' + m.content.split('</think>')[-1].lstrip('\n') + '</a>' }}
  {%- elif m.role == 'assistant' %}
{{ '<a>' + m.content.strip() + '</a>' }}
  {%- else %}
{{ '<' ~ m.role ~ '>' ~ m.content | replace('  ', ' ') ~ '</' ~ m.role ~ '>' }}{% if loop.index0 == ns.last_user - (1 if messages[0].role == 'system' else 0) %}[last user]{% endif %}
  {%- endif %}
  {%- if not loop.last %}{{ '|' }}{% endif %}
{%- endfor %}
{%- if tools %}
{%- for t in tools %}{{ '\n' }}{{ t | tojson }}{{ '\n' }}{{ t.function.parameters | tojson(indent=2) }}{% endfor %}
{%- endif %}
{{- '\n' ~ (messages | length) ~ ' ' ~ (messages | selectattr('role', 'equalto', 'user') | list | length) ~ ' ' ~ ns.found ~ ' ' ~ ('%d-%s' | format(3, 'x')) ~ ' ' ~ (messages | map(attribute='role') | join(',')) ~ ' ' ~ ('abc' | upper) ~ ' ' ~ ('A B' | lower) ~ ' ' ~ ([3,1,2] | sort | first) ~ ' ' ~ ('x' * 3) ~ ' ' ~ (bos_token is defined) ~ ' ' ~ (pad_token is defined) ~ ' ' ~ ('a,b'.split(',') | last) ~ ' ' ~ ('Hello' | length) ~ ' ' ~ ('title case' | title) ~ ' ' ~ ('  x ' | trim) ~ ' ' ~ ({'k': 1}.items() | list | length) ~ ' ' ~ ({'k': 'v'}.get('k')) ~ ' ' ~ ({'k': 'v'}.get('z', 'dflt')) ~ ' ' ~ ('é' | tojson) }}
{%- if add_generation_prompt %}{{ '\n<a>' }}{% endif %}
"""

MESSAGES = [
    {"role": "system", "content": "  Be brief.  "},
    {"role": "user", "content": "Hi  there"},
    {"role": "assistant", "content": "<think>hmm</think>\n\nHello!"},
    {"role": "user", "content": "!Weather?"},
    {"role": "assistant", "content": "  Sunny.  "},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & later, in °C",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="fixtures/data/expected/template_features.json")
    args = ap.parse_args()
    import transformers
    from transformers.utils.chat_template_utils import render_jinja_template

    out, _ = render_jinja_template([MESSAGES], tools=TOOLS, chat_template=TEMPLATE, add_generation_prompt=True, **SPECIAL)
    case = {"source": "transformers.utils.chat_template_utils.render_jinja_template",
            "transformers": transformers.__version__, "template": TEMPLATE, "messages": MESSAGES, "tools": TOOLS,
            "add_generation_prompt": True, "special_tokens": SPECIAL, "seed": args.seed, "rendered": out[0]}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(case, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
