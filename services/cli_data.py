"""``hetlora data``: write the built-in corpora as data files, and check a user's file before training on it.

``check`` runs the same reader and renderer training uses, so a file it accepts trains, and a file it
refuses fails with the same message (file, line, record, fields) and exit status 2, before any device
spends a round on it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

from trainer.data.blocks import pack_blocks, pad_id_of
from trainer.data.export import EXPORTABLE, export_corpus
from trainer.data.local import CLIENT_FILE, DataSpec, client_files, is_heldout_record
from trainer.data.records import FORMATS, detect_format, read_rows, to_records
from trainer.data.render import token_stream
from trainer.data.types import IGNORE_INDEX, LossOn


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="data files: export the built-in corpora, check a file").add_subparsers(
        dest="data_cmd", required=True
    )
    exp = data.add_parser(
        "export",
        help="write a built-in corpus as one folder per client (training.jsonl, validation.jsonl, client.json)",
    )
    exp.add_argument("corpus", choices=EXPORTABLE)
    exp.add_argument(
        "--clients",
        type=int,
        default=20,
        help="the N largest clients; simulations skip clients too small for their block minimums, so export "
        "a few more than you simulate (the built-in corpora look at 3x)",
    )
    exp.add_argument("--out", type=Path, required=True, help="folder to write the client folders into")
    exp.set_defaults(func=_export)

    check = data.add_parser("check", help="read and render a data file (or client folder) and report what trains")
    check.add_argument("path", type=Path, help="JSONL, JSON, CSV, Parquet, a save_to_disk folder or a client folder")
    check.add_argument("--format", choices=FORMATS, default="auto", help="record format (auto: from the columns)")
    check.add_argument("--loss-on", choices=get_args(LossOn), default="response", help="which tokens carry loss")
    check.add_argument("--model", default="smollm2", help="whose tokenizer: smollm2, tiny, a HF folder or a .gguf")
    check.add_argument("--seq-len", type=int, default=64, help="block length the file is packed into")
    check.set_defaults(func=_check)


def _export(args: argparse.Namespace) -> int:
    folders = export_corpus(args.corpus, args.clients, args.out, progress=True)
    for folder in folders:
        meta = json.loads((folder / CLIENT_FILE).read_text(encoding="utf-8"))
        print(f"  {folder.name}: {meta['train_records']} training + {meta['heldout_records']} validation records")
    print(f"wrote {len(folders)} {args.corpus} clients to {args.out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from trainer.model import load_tokenizer

    if args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {args.seq_len}")
    tokenizer = load_tokenizer(args.model)
    spec = DataSpec(path=args.path, format=args.format, loss_on=args.loss_on)
    train, validation = client_files(spec)
    for path in [train] if validation is None else [train, validation]:
        rows = read_rows(path, allow_empty=path == validation)
        fmt = detect_format({k for row in rows[:1] for k in row}, spec.columns, str(path)) if rows else "-"
        records = to_records(rows, spec.format, spec.columns, str(path))
        pairs = list(token_stream(records, tokenizer, spec.loss_on, str(path)))
        blocks = pack_blocks(pairs, pad_id_of(tokenizer), args.seq_len)
        n_tokens = sum(len(ids) for ids, _ in pairs)
        n_labels = sum(x != IGNORE_INDEX for _, labels in pairs for x in labels)
        print(
            f"{path}: {len(records)} records ({fmt if args.format == 'auto' else args.format}), {n_tokens} tokens, "
            f"{n_labels} with loss, {len(blocks)} blocks of {args.seq_len}"
        )
        if validation is None:
            held = sum(is_heldout_record(row) for row in rows)
            print(f"no validation file: {held} of the {len(rows)} records are held out (by a hash of each record)")
    return 0
