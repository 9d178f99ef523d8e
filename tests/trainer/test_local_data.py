"""User data files: reading every file type and record format, client datasets, and the errors bad data gets."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import datasets  # type: ignore[import-untyped]
import pytest
from transformers import PreTrainedTokenizerBase

from services.cli import main
from trainer.data import Conversation, DataError, DataSpec, Example, Message, load_client_data, load_client_dirs
from trainer.data.local import HELDOUT_PERCENT, is_heldout_record
from trainer.data.records import Columns, read_records

CHAT_ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chats(n: int, tag: str = "") -> list[dict[str, Any]]:
    """Distinct chat records of ~40 tokens each."""
    return [
        {"messages": [{"role": "user", "content": f"{tag}Question {i}: what is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{tag}It is {2 * i}, which I worked out by adding {i} twice."}]}
        for i in range(n)
    ]  # fmt: skip


# --- reading files -----------------------------------------------------------------------------------


def test_every_file_type_and_record_format(tmp_path: Path) -> None:
    chat = read_records(_jsonl(tmp_path / "chat.jsonl", [CHAT_ROW]))
    assert chat == [Conversation((Message("user", "Hi"), Message("assistant", "Hello there!")))]
    alpaca = [{"instruction": "Add", "input": "2 and 2", "output": "4"}, {"instruction": "Greet", "response": "Hi"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    assert read_records(tmp_path / "alpaca.json") == [Example("Add\n\n2 and 2", "4"), Example("Greet", "Hi")]
    (tmp_path / "pairs.csv").write_text("question,answer\nWhy?,Because.\n")
    cols = Columns(prompt="question", completion="answer")
    assert read_records(tmp_path / "pairs.csv", columns=cols) == [Example("Why?", "Because.")]
    datasets.Dataset.from_list([{"text": "Once upon a time", "id": 1}]).to_parquet(str(tmp_path / "t.parquet"))
    assert read_records(tmp_path / "t.parquet") == [Example(None, "Once upon a time")]
    datasets.Dataset.from_list([{"prompt": "p", "completion": "c", "text": "t"}]).save_to_disk(str(tmp_path / "disk"))
    assert read_records(tmp_path / "disk") == [Example("p", "c")]  # prompt+completion wins over text in auto
    assert read_records(tmp_path / "disk", format="text") == [Example(None, "t")]


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [{"text": "first"}])
    assert read_records(path) == [Example(None, "first")]
    _jsonl(path, [{"text": "second"}, {"text": "third"}])
    assert read_records(path) == [Example(None, "second"), Example(None, "third")]


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c",\n{"text": "d"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:4: malformed JSON line"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('[\n {"text": "a"},\n {"text": "b"\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:4: malformed JSON"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "list.jsonl").write_text('{"text": "a"}\n["text", "b"]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:2: expected one JSON object per line, got list"):
        read_records(tmp_path / "list.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: a folder must hold training.jsonl \(a client\) or a save_to_disk"):
        read_records(tmp_path / "folder")
    with pytest.raises(DataError, match="unknown record format 'csv'"):
        DataSpec(tmp_path / "folder", format="csv")  # type: ignore[arg-type]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: unknown file type '\.txt'"):
        read_records(tmp_path / "notes.txt")


def test_record_errors_name_the_record_and_the_fields_found(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "answer": "d"}]
    lacks = r"pc\.jsonl: record 1 lacks the field 'completion' of the prompt-completion format"
    with pytest.raises(DataError, match=lacks + r" \(fields: \['answer', 'prompt'\]\)"):
        read_records(_jsonl(tmp_path / "pc.jsonl", rows))
    with pytest.raises(DataError, match=r"record 0 has a int, not text, in the field 'text'"):
        read_records(_jsonl(tmp_path / "n.jsonl", [{"text": 5}]))
    with pytest.raises(DataError, match=r"cannot tell the record format from the columns \['body', 'title'\]"):
        read_records(_jsonl(tmp_path / "x.jsonl", [{"title": "t", "body": "b"}]))
    with pytest.raises(DataError, match=r"record 1: message 0 needs text 'role' and 'content' \(found \['role'\]\)"):
        read_records(_jsonl(tmp_path / "m.jsonl", [CHAT_ROW, {"messages": [{"role": "user"}]}]))
    with pytest.raises(DataError, match=r"record 0: 'messages' must be a non-empty list"):
        read_records(_jsonl(tmp_path / "e.jsonl", [{"messages": []}]))
    with pytest.raises(DataError, match="unknown record format 'yaml'"):
        read_records(_jsonl(tmp_path / "ok.jsonl", [CHAT_ROW]), format="yaml")  # type: ignore[arg-type]


# --- one client ----------------------------------------------------------------------------------------


def test_hash_split_is_deterministic_and_stable_when_records_are_added() -> None:
    rows = _chats(400)
    flags = [is_heldout_record(r) for r in rows]
    assert 0.6 * HELDOUT_PERCENT < 100 * sum(flags) / len(rows) < 1.4 * HELDOUT_PERCENT
    # A later record with an extra field (datasets fills it with None elsewhere) moves nobody.
    assert [is_heldout_record({**r, "source": None}) for r in rows] == flags


def test_load_client_data_from_a_file_a_folder_or_an_explicit_validation_file(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    rows = _chats(200)
    client = load_client_data(DataSpec(_jsonl(tmp_path / "alice.jsonl", rows)), tokenizer, 64, heldout_blocks=2)
    n_held = sum(map(is_heldout_record, rows))
    assert client.client_id == "alice" and client.num_train_examples == 200 - n_held
    assert len(client.heldout) == 2 and len(client.train) >= 4 and client.train.seq_len == 64
    folder = tmp_path / "bob"
    folder.mkdir()
    _jsonl(folder / "training.jsonl", rows[:150])
    _jsonl(folder / "validation.jsonl", rows[150:])
    bob = load_client_data(DataSpec(folder), tokenizer, 64, heldout_blocks=2, client_id="device-7")
    assert bob.client_id == "device-7" and bob.num_train_examples == 150
    explicit = load_client_data(
        DataSpec(folder / "training.jsonl", validation=folder / "validation.jsonl"), tokenizer, 64, heldout_blocks=2
    )
    assert explicit.train.input_ids.equal(bob.train.input_ids) and explicit.heldout.labels.equal(bob.heldout.labels)


def test_bad_or_small_client_data_trains_nothing(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tiny: its training 1 records make 0 blocks of 64 tokens \(\d+ tokens"):
        spec = DataSpec(
            _jsonl(tmp_path / "tiny.jsonl", [CHAT_ROW]), validation=_jsonl(tmp_path / "v.jsonl", _chats(40))
        )
        load_client_data(spec, tokenizer, 64, heldout_blocks=1)
    with pytest.raises(DataError, match=r"its held-out 0 records make 0 blocks"):
        load_client_data(DataSpec(tmp_path / "tiny.jsonl", validation=_jsonl(tmp_path / "e.jsonl", [])), tokenizer, 64)
    no_system = copy.deepcopy(tokenizer)
    no_system.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    rows = _chats(60)
    rows[37] = {"messages": [{"role": "system", "content": "x"}, *rows[37]["messages"]]}
    path = _jsonl(tmp_path / "roles.jsonl", rows)
    rejects = r"roles\.jsonl: record 37: the chat template rejects the roles system, user, assistant: System role"
    with pytest.raises(DataError, match=rejects):
        load_client_data(DataSpec(path), no_system, 64, heldout_blocks=1, min_train_blocks=1)


# --- many clients (simulation) -------------------------------------------------------------------------


def test_load_client_dirs_takes_files_in_name_order_and_skips_small_ones(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    data = tmp_path / "clients"
    data.mkdir()
    _jsonl(data / "b-carol.jsonl", _chats(120, "c"))
    _jsonl(data / "a-small.jsonl", _chats(3))
    _jsonl(data / "c-dave.jsonl", _chats(120, "d"))
    (data / "README.md").write_text("not a client")
    clients = load_client_dirs(data, tokenizer, 2, 64, heldout_blocks=2)
    assert [c.client_id for c in clients] == ["b-carol", "c-dave"]
    with pytest.raises(DataError, match=r"only 2 of its 3 clients have >= 4 train blocks .* 3 were requested"):
        load_client_dirs(data, tokenizer, 3, 64, heldout_blocks=2)
    with pytest.raises(DataError, match="pass partition_by=COLUMN"):
        load_client_dirs(data / "b-carol.jsonl", tokenizer, 1, 64)


def test_partition_one_file_by_a_column(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    rows = [{**r, "user": "u2"} for r in _chats(100, "x")] + [{**r, "user": "u1"} for r in _chats(100, "y")]
    rows += [{**r, "user": "u3"} for r in _chats(150, "z")]
    path = _jsonl(tmp_path / "all.jsonl", rows)
    clients = load_client_dirs(path, tokenizer, 3, 64, heldout_blocks=2, partition_by="user")
    assert [c.client_id for c in clients] == ["user:u3", "user:u1", "user:u2"]  # most records, then value
    assert sum(c.num_train_examples for c in clients) == sum(not is_heldout_record(r) for r in rows)
    _jsonl(path, [*rows, {"messages": CHAT_ROW["messages"]}])
    with pytest.raises(
        DataError, match=r"all\.jsonl: record 350 has no 'user' to partition by \(fields: \['messages'\]\)"
    ):
        load_client_dirs(path, tokenizer, 3, 64, partition_by="user")


# --- hetlora data check ---------------------------------------------------------------------------------


def test_cli_check_reports_counts_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _jsonl(tmp_path / "mine.jsonl", _chats(50))
    assert main(["data", "check", str(path), "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 50 records (chat), " in out and " blocks of 32" in out and "are held out" in out
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    assert main(["data", "check", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:2: malformed JSON line" in capsys.readouterr().err
