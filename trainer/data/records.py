"""A user's data file → records: JSONL, JSON, CSV, Parquet or a ``save_to_disk`` folder, read offline.

Files are read with Hugging Face ``datasets`` (one reader for every format, typed columns), into a
throw-away cache directory and kept in memory: nothing is fetched, and an edited file is always read
afresh rather than matched to a stale arrow cache. Four record formats, told apart by their columns:

* chat: ``{"messages": [{"role": ..., "content": ...}, ...]}``
* instruction (Alpaca): ``{"instruction", "input" (optional), "output"}`` (``response`` for ``output``)
* prompt-completion: ``{"prompt", "completion"}``
* text: ``{"text"}`` (loss on every token)

Bad data raises ``DataError`` naming the file and, where it can, the line, record and fields found.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from trainer.data.types import Conversation, DataError, Example, Message, Record

__all__ = [
    "FORMATS",
    "Columns",
    "DataError",
    "RecordFormat",
    "detect_format",
    "read_records",
    "read_rows",
    "to_records",
]

RecordFormat = Literal["auto", "chat", "instruction", "prompt-completion", "text"]
FORMATS: tuple[str, ...] = get_args(RecordFormat)
_BUILDERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Columns:
    """The column names each format reads (for files whose columns are named differently)."""

    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    text: str = "text"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"


def _json_error(path: Path) -> DataError | None:
    """The first malformed line of a JSON Lines file (or the spot in a JSON file): datasets names neither."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json" and text.lstrip()[:1] in "[{":
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as exc:
            return DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return DataError(f"{path}:{lineno}: malformed JSON line: {exc.msg} (column {exc.colno})")
        if not isinstance(value, dict):
            return DataError(f"{path}:{lineno}: expected one JSON object per line, got {type(value).__name__}")
    return None


def read_rows(path: Path, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Every row of ``path`` as a dict (a column a row lacks is None), via ``datasets``, offline.

    An empty file is an error unless ``allow_empty`` (an exported client with no held-out text)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if allow_empty and path.is_file() and not path.read_bytes().strip():
        return []
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets reads its config: never reach a hub
    import datasets  # type: ignore[import-untyped]  # heavy (pyarrow, pandas): imported on first use

    verbosity = datasets.logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs parse errors we report better
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            if not any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
                raise DataError(f"{path}: a folder must hold training.jsonl (a client) or a save_to_disk dataset")
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        else:
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(_BUILDERS)}")
            if not path.read_bytes().strip():
                raise DataError(f"{path}: the file is empty")
            with tempfile.TemporaryDirectory(prefix="hetlora-datasets-") as cache:
                loaded = datasets.load_dataset(
                    builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
                )
        rows: list[dict[str, Any]] = loaded.to_list()
    except DataError:
        raise
    except Exception as exc:
        located = _json_error(path) if path.is_file() and _BUILDERS.get(path.suffix.lower()) == "json" else None
        cause = exc.__cause__ or exc
        raise (located or DataError(f"{path}: cannot be read: {type(cause).__name__}: {cause}")) from exc
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    if not rows:
        raise DataError(f"{path}: the file holds no records")
    return rows


def detect_format(present: set[str], cols: Columns | None = None, source: str = "data") -> str:
    """The record format a file with columns ``present`` holds (chat, instruction, prompt-completion, text)."""
    cols = cols or Columns()
    if cols.messages in present:
        return "chat"
    if cols.instruction in present and (cols.output in present or "response" in present):
        return "instruction"
    if cols.prompt in present and cols.completion in present:
        return "prompt-completion"
    if cols.text in present:
        return "text"
    raise DataError(
        f"{source}: cannot tell the record format from the columns {sorted(present)}; expected "
        f"{cols.messages!r} (chat), {cols.instruction!r} + {cols.output!r} (instruction), {cols.prompt!r} + "
        f"{cols.completion!r} (prompt-completion) or {cols.text!r} (text); or name the format"
    )


def _field(row: dict[str, Any], name: str, index: int, fmt: str, source: str, optional: bool = False) -> str:
    value = row.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        found = sorted(k for k, v in row.items() if v is not None)
        problem = "lacks" if value is None else f"has a {type(value).__name__}, not text, in"
        raise DataError(f"{source}: record {index} {problem} the field {name!r} of the {fmt} format (fields: {found})")
    return value


def _messages(value: Any, index: int, source: str, column: str) -> Conversation:
    if not isinstance(value, list) or not value:
        raise DataError(f"{source}: record {index}: {column!r} must be a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            found = sorted(k for k, v in m.items() if v is not None) if isinstance(m, dict) else type(m).__name__
            raise DataError(f"{source}: record {index}: message {j} needs text 'role' and 'content' (found {found})")
        out.append(Message(m["role"], m["content"]))
    return Conversation(tuple(out))


def to_records(
    rows: list[dict[str, Any]], format: RecordFormat = "auto", columns: Columns | None = None, source: str = "data"
) -> list[Record]:
    """Rows → records of ``format`` (``auto``: from the columns); record numbers in errors count from 0."""
    cols = columns or Columns()
    if format not in FORMATS:
        raise DataError(f"unknown record format {format!r}; valid formats: {', '.join(FORMATS)}")
    if not rows:
        return []
    present = {k for row in rows[:1] for k in row}
    fmt = detect_format(present, cols, source) if format == "auto" else format
    records: list[Record] = []
    for i, row in enumerate(rows):
        if fmt == "chat":
            records.append(_messages(row.get(cols.messages), i, source, cols.messages))
        elif fmt == "instruction":
            instruction = _field(row, cols.instruction, i, fmt, source)
            extra = _field(row, cols.input, i, fmt, source, optional=True)
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            output = cols.output if row.get(cols.output) is not None or row.get("response") is None else "response"
            records.append(Example(prompt, _field(row, output, i, fmt, source)))
        elif fmt == "prompt-completion":
            prompt = _field(row, cols.prompt, i, fmt, source)
            records.append(Example(prompt, _field(row, cols.completion, i, fmt, source)))
        else:
            records.append(Example(None, _field(row, cols.text, i, fmt, source)))
    return records


def read_records(path: Path, format: RecordFormat = "auto", columns: Columns | None = None) -> list[Record]:
    """The records of one file (see the module docstring for the formats)."""
    return to_records(read_rows(path), format, columns, source=str(path))
