"""Rendering records with the tokenizer's own chat template: labels on assistant turns, default system prompts."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from trainer.data import IGNORE_INDEX, Conversation, DataError, Example, Message, load_chitchat_users
from trainer.data.blocks import build_blocks
from trainer.data.render import render_record, token_stream
from trainer.data.template import template_of

# Gemma's template, abridged: system folded into the first user turn, roles must alternate, "model" turns.
GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# Qwen2's template, abridged: a default system prompt when the conversation has none.
QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Marks the conversation's end: a prefix render is then no prefix of the full render.
ENDS_WITH_MARK = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% else %}{{ '[end]' }}{% endif %}"
)
CHAT = Conversation(
    (
        Message("user", "Hi! What's a good book?"),
        Message("assistant", "Try *Dune*.\nIt is long."),
        Message("user", "Thanks"),
        Message("assistant", "You're welcome :)"),
    )
)


def _with_template(tokenizer: PreTrainedTokenizerBase, template: str | None) -> PreTrainedTokenizerBase:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tokenizer.decode(ids))


def _id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def _labelled_runs(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded maximal runs of labelled tokens."""
    runs: list[list[int]] = []
    prev = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if prev == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        prev = label
    return [_decode(tokenizer, r) for r in runs]


def _reference_stream(
    examples: Sequence[Example], tok: PreTrainedTokenizerBase
) -> Iterator[tuple[list[int], list[int]]]:
    """blocks.py's hand-built ChatML formatter before chat templates (kept here as the oracle)."""

    def enc(texts: list[str]) -> list[list[int]]:
        return [list(x) for x in tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]]

    im_start, im_end, eos = _id(tok, "<|im_start|>"), _id(tok, "<|im_end|>"), int(tok.eos_token_id)
    newline, assistant = enc(["\n", "assistant\n"])
    for ex in examples:
        if ex.prompt is None:
            ids = [*enc([ex.response])[0], eos]
            yield ids, list(ids)
            continue
        head = [im_start, *enc([f"user\n{ex.prompt}"])[0], im_end, *newline, im_start, *assistant]
        body = [*enc([ex.response])[0], im_end]
        yield head + body + newline, [IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(newline)


def test_smollm2_matches_the_hand_built_chatml_on_real_chitchat(tokenizer: PreTrainedTokenizerBase) -> None:
    examples = [e for user in load_chitchat_users(3) for e in user.train[:150]]
    examples += [Example(None, "To be, or not to be"), Example("say <|im_end|> now", "ok <|im_start|> fine")]
    new = list(token_stream(examples, tokenizer))
    assert new == list(_reference_stream(examples, tokenizer))
    # ... as a Conversation too, and that is SmolLM2's template minus its injected default system prompt.
    ids, labels = render_record(Conversation((Message("user", "P"), Message("assistant", "R"))), tokenizer)
    assert _decode(tokenizer, ids) == "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\nR<|im_end|>\n"
    assert _labelled_runs(tokenizer, ids, labels) == ["R<|im_end|>"]
    tpl = template_of(tokenizer)
    assert tpl is not None and tpl.head == "<|im_start|>system\n<|im_end|>\n" and tpl.keep == ""


def test_multi_turn_labels_every_assistant_turn_and_keeps_a_given_system_prompt(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    ids, labels = render_record(CHAT, tokenizer)
    assert _labelled_runs(tokenizer, ids, labels) == [
        "Try *Dune*.\nIt is long.<|im_end|>",
        "You're welcome :)<|im_end|>",
    ]
    assert "system" not in _decode(tokenizer, ids)
    with_system = Conversation((Message("system", "Be brief."), *CHAT.messages))
    ids, labels = render_record(with_system, tokenizer)
    assert _decode(tokenizer, ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!")
    assert len(_labelled_runs(tokenizer, ids, labels)) == 2
    ids, labels = render_record(CHAT, tokenizer, loss_on="all")
    assert labels == ids


def test_gemma_style_template(tokenizer: PreTrainedTokenizerBase) -> None:
    gemma = _with_template(tokenizer, GEMMA)
    tpl = template_of(gemma)
    assert tpl is not None and tpl.head == ""  # no default system prompt to suppress
    ids, labels = render_record(CHAT, gemma)
    text = _decode(gemma, ids)
    assert text.startswith("<|im_start|><start_of_turn>user\nHi! What's a good book?<end_of_turn>\n")
    assert "<start_of_turn>model\nTry *Dune*." in text
    assert _labelled_runs(gemma, ids, labels) == [
        "Try *Dune*.\nIt is long.<end_of_turn>",
        "You're welcome :)<end_of_turn>",
    ]
    folded = Conversation((Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", " Hello ")))
    ids, labels = render_record(folded, gemma)
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in _decode(gemma, ids)
    assert _labelled_runs(gemma, ids, labels) == ["Hello<end_of_turn>"]  # the template trims the content


def test_qwen2_style_default_system_prompt_is_suppressed(tokenizer: PreTrainedTokenizerBase) -> None:
    qwen = _with_template(tokenizer, QWEN2)
    ids, labels = render_record(CHAT, qwen)
    text = _decode(qwen, ids)
    assert "helpful assistant" not in text and text.startswith("<|im_start|>user\nHi!")
    assert _labelled_runs(qwen, ids, labels) == ["Try *Dune*.\nIt is long.<|im_end|>", "You're welcome :)<|im_end|>"]
    # A bos the template emits once survives the suppressed system turn.
    with_bos = _with_template(tokenizer, "{{ bos_token }}" + QWEN2)
    with_bos.bos_token = "<|endoftext|>"
    ids, labels = render_record(CHAT, with_bos)
    assert _decode(with_bos, ids).startswith("<|endoftext|><|im_start|>user\nHi!")
    assert len(_labelled_runs(with_bos, ids, labels)) == 2
    # An Example renders as the same [user, assistant] conversation.
    assert render_record(Example("Hi", "Hello"), qwen) == render_record(
        Conversation((Message("user", "Hi"), Message("assistant", "Hello"))), qwen
    )


def test_special_token_text_in_contents_stays_text(tokenizer: PreTrainedTokenizerBase) -> None:
    typed = Conversation((Message("user", "end it: <|im_end|>"), Message("assistant", "no <|im_start|> here")))
    ids, labels = render_record(typed, tokenizer)
    im_start, im_end = _id(tokenizer, "<|im_start|>"), _id(tokenizer, "<|im_end|>")
    assert ids.count(im_start) == 2 and ids.count(im_end) == 2  # only the template's own
    assert _labelled_runs(tokenizer, ids, labels) == ["no <|im_start|> here<|im_end|>"]
    assert _decode(tokenizer, ids) == str(
        tokenizer.apply_chat_template(
            [{"role": "system", "content": ""}, *({"role": m.role, "content": m.content} for m in typed.messages)],
            tokenize=False,
        )
    ).removeprefix("<|im_start|>system\n<|im_end|>\n")


def test_template_errors_name_the_record(tokenizer: PreTrainedTokenizerBase) -> None:
    gemma = _with_template(tokenizer, GEMMA)
    twice = Conversation((Message("user", "a"), Message("user", "b"), Message("assistant", "c")))
    with pytest.raises(DataError, match=r"data.jsonl: record 7: the chat template rejects the roles user, user, "):
        list(token_stream([CHAT, twice], gemma, source="data.jsonl", indices=[3, 7]))
    with pytest.raises(DataError, match=r"records: record 0: .*not begin the whole conversation"):
        render_record(CHAT, _with_template(tokenizer, ENDS_WITH_MARK))
    with pytest.raises(DataError, match=r"record 0: the conversation starts with an assistant turn"):
        render_record(Conversation((Message("assistant", "hi"),)), gemma)


def test_without_a_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """A pretrained base model has no template: turns become newline-separated text, each reply ending in eos."""
    bare = _with_template(tokenizer, None)
    ids, labels = render_record(Example("Q: 2+2?", "A: 4"), bare)
    prompt = bare("Q: 2+2?\n", add_special_tokens=False)["input_ids"]
    reply = bare("A: 4", add_special_tokens=False)["input_ids"] + [bare.eos_token_id]
    assert ids == prompt + reply
    assert labels == [IGNORE_INDEX] * len(prompt) + reply
    chat = Conversation((Message("user", "Q: 2+2?"), Message("assistant", "A: 4")))
    assert render_record(chat, bare) == (ids, labels)
    assert render_record(chat, bare, loss_on="all") == (ids, ids)


def test_a_changed_template_is_probed_again(tokenizer: PreTrainedTokenizerBase) -> None:
    tok = _with_template(tokenizer, QWEN2)
    assert template_of(tok).head  # type: ignore[union-attr]
    tok.chat_template = GEMMA
    assert template_of(tok).head == ""  # type: ignore[union-attr]


def test_build_blocks_packs_conversations_and_loss_on_all(tokenizer: PreTrainedTokenizerBase) -> None:
    blocks = build_blocks([CHAT] * 4, tokenizer, seq_len=32)
    assert blocks.input_ids.shape[1] == 32 and len(blocks) >= 2
    everything = build_blocks([CHAT] * 4, tokenizer, seq_len=32, loss_on="all")
    mask = everything.attention_mask.bool()
    assert torch.equal(everything.labels[mask], everything.input_ids[mask])
    with pytest.raises(ValueError, match="loss_on"):
        build_blocks([CHAT], tokenizer, seq_len=32, loss_on="prompt")  # type: ignore[arg-type]
