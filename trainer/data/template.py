"""What the renderer must know about a tokenizer's chat template, probed once per tokenizer and cached.

Two things vary between templates and cannot be read off the Jinja source reliably:

* **A default system prompt.** SmolLM2's and Qwen2's templates insert one ("You are a helpful AI assistant
  named SmolLM...") when a conversation has no system turn. Those ~20 tokens would be context in every
  record, wasting a third of a 64-token block and nudging nothing. The probe renders [system S, user U]
  and [user U]: the template injects a default exactly when the second equals the first with S replaced
  by some non-empty text. Such templates render conversations with an empty system turn instead, and its
  text (``head``, e.g. ``<|im_start|>system\\n<|im_end|>\\n``) is cut off again. A bos the template emits
  once at the very start is kept (``keep``); SmolLM2's bos is ``<|im_start|>`` itself, used in every turn,
  so nothing is kept there.
* **Its special tokens.** A user's literal ``<|im_end|>`` is masked with private-use characters of the
  same length before a second render, so the template's own special tokens are the only ones left.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

_PROBE_SYSTEM = "hetlora-probe-system"
_PROBE_USER = "ping"
_MASK = "\ue000"  # private use: no template treats it specially, no tokenizer has it as an added token
_CACHE: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, Template] = weakref.WeakKeyDictionary()


def render_batch(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, Any]]], generation: bool
) -> list[str]:
    """The template's text for each conversation (one batched call: ~30 % cheaper than one by one)."""
    if not conversations:
        return []
    out = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=generation)
    return [str(t) for t in out]


@dataclass(frozen=True)
class Template:
    """One tokenizer's chat template as probed; ``template_of`` builds it."""

    tokenizer: PreTrainedTokenizerBase
    source: str  # the chat_template it was probed for: a changed template is probed again
    head: str  # the empty system turn cut off every render ("" when the template injects no default)
    keep: str  # the part of head that stays (a bos emitted once)
    literals: re.Pattern[str] | None  # the tokenizer's special-token strings, longest first
    special_ids: dict[str, int]

    def has_literal(self, contents: Iterable[str]) -> bool:
        return self.literals is not None and any(self.literals.search(c) for c in contents)

    def mask(self, content: str) -> str:
        if self.literals is None:
            return content
        return self.literals.sub(lambda m: _MASK * len(m.group()), content)

    def tokenize_piecewise(self, text: str, masked: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Tokens and char offsets of ``text`` where only the specials still present in ``masked`` (the
        template's) are special tokens; everything between is tokenised with specials split."""
        assert self.literals is not None
        tok = self.tokenizer
        cuts = [(m.start(), m.end()) for m in self.literals.finditer(masked)]
        pieces = [
            (a, b) for a, b in zip([0, *(e for _, e in cuts)], [*(s for s, _ in cuts), len(text)], strict=True) if b > a
        ]
        enc = tok(
            [text[a:b] for a, b in pieces] or [""],
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )
        spans = sorted([(a, b, None) for a, b in pieces] + [(a, b, text[a:b]) for a, b in cuts])
        piece_tokens = iter(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for a, b, special in spans:
            if special is not None:
                ids.append(self.special_ids[special])
                offsets.append((a, b))
                continue
            piece_ids, piece_offsets = next(piece_tokens)
            ids += list(piece_ids)
            offsets += [(a + s, a + e) for s, e in piece_offsets]
        return ids, offsets


def _probe(tok: PreTrainedTokenizerBase) -> tuple[str, str]:
    """(head, keep) for ``tok``'s template; ("", "") when it injects no default system prompt."""
    system = [{"role": "system", "content": _PROBE_SYSTEM}]
    user = [{"role": "user", "content": _PROBE_USER}]
    try:
        with_system, without = render_batch(tok, [system + user, user], generation=False)
        empty_head, empty_system = render_batch(
            tok, [[{"role": "system", "content": ""}], [{**system[0], "content": ""}, *user]], False
        )
    except Exception:  # a template that refuses system turns cannot inject one either
        return "", ""
    if _PROBE_SYSTEM not in with_system:
        return "", ""
    before, after = with_system.split(_PROBE_SYSTEM, 1)
    injects = len(without) > len(before) + len(after) and without.startswith(before) and without.endswith(after)
    if not injects or empty_system != before + after or not empty_system.startswith(empty_head):
        return "", ""
    bos = tok.bos_token if isinstance(tok.bos_token, str) and tok.bos_token else None
    keep = bos if bos and empty_head.startswith(bos) and with_system.count(bos) == 1 else ""
    return empty_head, keep


def template_of(tok: PreTrainedTokenizerBase) -> Template | None:
    """The probed template of ``tok`` (cached while ``tok`` lives), or None when it has no chat template."""
    source = tok.chat_template
    if isinstance(source, dict):  # named templates: apply_chat_template uses "default" too
        source = source.get("default")
    if not isinstance(source, str) or not source:
        return None
    cached = _CACHE.get(tok)
    if cached is not None and cached.source == source:
        return cached
    head, keep = _probe(tok)
    specials = {str(t.content) for t in tok.added_tokens_decoder.values() if t.special}
    specials |= {s for s in tok.all_special_tokens if s}
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    special_ids = {s: i for s, i in ids.items() if isinstance(i, int)}
    pattern = "|".join(re.escape(s) for s in sorted(special_ids, key=len, reverse=True))
    tpl = Template(tok, source, head, keep, re.compile(pattern) if pattern else None, special_ids)
    _CACHE[tok] = tpl
    return tpl
