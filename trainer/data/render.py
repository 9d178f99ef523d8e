"""Records → (input_ids, labels) through the tokenizer's own chat template.

A conversation is rendered to text once with ``apply_chat_template``; each assistant turn's character span
is ``[len(render(msgs[:i], add_generation_prompt=True)), len(render(msgs[:i + 1])))``, right-stripped, so
the end-of-turn token (``<|im_end|>``, ``<end_of_turn>``) is learned and the newline after it is not. The
text is tokenised once with offsets and a token is labelled when its characters lie inside such a span.
That works for any template whose renders of a conversation's prefixes are prefixes of its full render;
one that breaks this is refused with a ``DataError`` rather than mislabelled.

Templates that inject a default system prompt when a conversation has none (SmolLM2, Qwen2) would put ~20
unlearnable tokens into every record, so such a conversation is rendered with an empty system turn that
is then cut off (see ``trainer.data.template``): for SmolLM2 a [user, assistant] record becomes exactly
``<|im_start|>user\\nP<|im_end|>\\n<|im_start|>assistant\\nR<|im_end|>\\n``.

Special-token text typed by a user (a literal ``<|im_end|>``) must stay text. Whole-text tokenisation
cannot tell it from the template's own tokens, so a record whose contents hold such a literal is
tokenised piecewise instead: the template's specials are found in a render with the literals masked,
and only the text between them is tokenised, with ``split_special_tokens=True``.

A tokenizer without a chat template (a pretrained base model such as Gemma-3-270M's GGUF) gets a plain
transcript: prompts and user turns followed by a newline, replies followed by the eos token, which is
learned. Plain text is its tokens plus eos. Both are tokenised with ``split_special_tokens=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainer.data.template import Template, render_batch, template_of
from trainer.data.types import IGNORE_INDEX, Conversation, DataError, LossOn, Message, Record

Pair = tuple[list[int], list[int]]
Span = tuple[int, int]
_BATCH = 512


def _dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _as_conversation(record: Record) -> Conversation | None:
    if isinstance(record, Conversation):
        return record
    if record.prompt is None:
        return None
    return Conversation((Message("user", record.prompt), Message("assistant", record.response)))


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:  # the tokenizer raises on an empty batch
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]]


@dataclass(frozen=True)
class _Chat:
    where: str
    msgs: list[dict[str, Any]]  # as rendered: an empty system turn first when the template injects a default
    cuts: list[int]  # indices of the assistant turns in msgs
    head: str  # the injected empty system turn's text, cut off again ("" when none was injected)


def _prepare(tpl: Template, conv: Conversation, where: str) -> _Chat:
    msgs = _dicts(conv.messages)
    head = tpl.head if tpl.head and (not msgs or msgs[0]["role"] != "system") else ""
    if head:
        msgs = [{"role": "system", "content": ""}, *msgs]
    cuts = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if cuts and cuts[0] == 0:
        raise DataError(f"{where}: the conversation starts with an assistant turn, which answers nothing")
    return _Chat(where, msgs, cuts, head)


def _render_all(tpl: Template, chats: list[_Chat]) -> list[list[str]]:
    """Per conversation: [full, open_1, close_1, open_2, ...], one batched call per kind; the close of a
    final assistant turn is the full render itself. A failing batch is retried one by one to name it."""
    tok = tpl.tokenizer
    try:
        fulls = render_batch(tok, [c.msgs for c in chats], generation=False)
        opens = iter(render_batch(tok, [c.msgs[:i] for c in chats for i in c.cuts], generation=True))
        closes = iter(render_batch(tok, [c.msgs[: i + 1] for c in chats for i in c.cuts if i + 1 < len(c.msgs)], False))
    except Exception as exc:  # jinja's raise_exception, a missing key, ...: report the template's own words
        if len(chats) == 1:
            roles = ", ".join(m["role"] for m in chats[0].msgs[1 if chats[0].head else 0 :])
            raise DataError(f"{chats[0].where}: the chat template rejects the roles {roles}: {exc}") from exc
        for one in chats:
            _render_all(tpl, [one])
        raise
    out = []
    for full, chat in zip(fulls, chats, strict=True):
        row = [full]
        for i in chat.cuts:
            row += [next(opens), next(closes) if i + 1 < len(chat.msgs) else full]
        out.append(row)
    return out


def _chat_texts(tpl: Template, chats: list[_Chat]) -> list[tuple[str, list[Span], str]]:
    """(text, assistant char spans, the text with content special literals masked) per conversation."""
    items = []
    for chat, (full, *bounds) in zip(chats, _render_all(tpl, chats), strict=True):
        for prefix in [chat.head, *bounds]:
            if not full.startswith(prefix):
                raise DataError(
                    f"{chat.where}: the chat template renders a prefix of this conversation as text that does "
                    f"not begin the whole conversation's ({prefix[-40:]!r} vs {full[: len(prefix)][-40:]!r}), "
                    "so its assistant turns cannot be located; this template is not supported"
                )
        cut = len(chat.head) - len(tpl.keep if chat.head else "")
        spans = [
            (len(a) - cut, max(len(b.rstrip()), len(a)) - cut) for a, b in zip(bounds[::2], bounds[1::2], strict=True)
        ]
        masked = full
        if tpl.has_literal(m["content"] for m in chat.msgs):
            masked = render_batch(
                tpl.tokenizer, [[{**m, "content": tpl.mask(m["content"])} for m in chat.msgs]], False
            )[0]
            if len(masked) != len(full):
                raise DataError(f"{chat.where}: the chat template alters special-token text in the contents")
        keep = tpl.keep if chat.head else ""
        items.append((keep + full[len(chat.head) :], spans, keep + masked[len(chat.head) :]))
    return items


def _label(ids: list[int], offsets: list[Span], spans: list[Span], loss_on: LossOn) -> Pair:
    """Labels on the tokens whose characters lie inside an assistant span (one pass: both are sorted)."""
    if loss_on == "all":
        return ids, list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for k, (a, b) in enumerate(offsets):
        while j < len(spans) and spans[j][1] < b:
            j += 1
        if j < len(spans) and spans[j][0] <= a < b:
            labels[k] = ids[k]
    return ids, labels


def _tokenize_chats(tpl: Template, items: list[tuple[str, list[Span], str]], loss_on: LossOn) -> list[Pair]:
    tok = tpl.tokenizer
    if not getattr(tok, "is_fast", False):
        raise DataError(f"{type(tok).__name__} gives no character offsets; chat records need a fast tokenizer")
    plain = [k for k, (text, _, masked) in enumerate(items) if text == masked]
    out: dict[int, Pair] = {}
    if plain:
        enc = tok([items[k][0] for k in plain], add_special_tokens=False, return_offsets_mapping=True)
        for k, ids, offs in zip(plain, enc["input_ids"], enc["offset_mapping"], strict=True):
            out[k] = _label(list(ids), [tuple(o) for o in offs], items[k][1], loss_on)
    for k, (text, spans, masked) in enumerate(items):
        if k not in out:
            ids, offs = tpl.tokenize_piecewise(text, masked)
            out[k] = _label(ids, offs, spans, loss_on)
    return [out[k] for k in range(len(items))]


def _transcript(record: Record) -> list[tuple[str, bool]]:
    """(text, trains) turns of a record for a tokenizer without a chat template (a pretrained base model).

    Prompts and non-assistant turns end with a newline and carry no loss; replies (assistant turns,
    completions, plain text) are followed by the eos token and carry it.
    """
    if isinstance(record, Conversation):
        return [
            (m.content if m.role == "assistant" else m.content + "\n", m.role == "assistant") for m in record.messages
        ]
    head = [(record.prompt + "\n", False)] if record.prompt is not None else []
    return [*head, (record.response, True)]


def _render_batch(
    records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, loss_on: LossOn, where: list[str]
) -> list[Pair]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token, which ends every plain-text record")
    tpl = template_of(tokenizer)
    out: dict[int, Pair] = {}
    chats: dict[int, _Chat] = {}
    for k, record in enumerate(records):
        conv = _as_conversation(record) if tpl else None
        if tpl and conv:
            chats[k] = _prepare(tpl, conv, where[k])
    if tpl and chats:
        texts = _chat_texts(tpl, list(chats.values()))
        out.update(zip(chats, _tokenize_chats(tpl, texts, loss_on), strict=True))
    plain = {k: _transcript(r) for k, r in enumerate(records) if k not in out}
    pieces = iter(_encode(tokenizer, [text for turns in plain.values() for text, _ in turns]))
    for k, turns in plain.items():  # no chat template: newline-separated turns, each reply ending with eos
        ids: list[int] = []
        labels: list[int] = []
        for _, learn in turns:
            piece = next(pieces) + ([eos] if learn else [])
            ids += piece
            labels += piece if learn or loss_on == "all" else [IGNORE_INDEX] * len(piece)
        out[k] = (ids, labels)
    return [out[k] for k in range(len(records))]


def token_stream(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    loss_on: LossOn = "response",
    source: str = "records",
    indices: Sequence[int] | None = None,
) -> Iterator[Pair]:
    """(input_ids, labels) per record, in order, rendered in batches (the fast tokenizer is much faster so).

    ``source`` and ``indices`` (each record's index in its file) only word error messages.
    """
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    for start in range(0, len(records), _BATCH):
        batch = records[start : start + _BATCH]
        where = [f"{source}: record {indices[start + k] if indices else start + k}" for k in range(len(batch))]
        yield from _render_batch(batch, tokenizer, loss_on, where)


def render_record(record: Record, tokenizer: PreTrainedTokenizerBase, loss_on: LossOn = "response") -> Pair:
    """One record's (input_ids, labels); ``labels`` is ``IGNORE_INDEX`` where there is no loss."""
    return next(token_stream([record], tokenizer, loss_on))
