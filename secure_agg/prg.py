"""Mask PRG: AES-256-CTR keyed with the full 32-byte seed, keystream read as little-endian uint32 words.

Why AES-CTR: it is the fastest cryptographic stream on this hardware (AES-NI, ~6 GB/s when the keystream is
written into a preallocated buffer), and keying with the whole 256-bit secret avoids Flower's 32-bit seed
folding into MT19937. The counter starts at zero; every seed is used for exactly one stream because seeds are
derived per session (pairwise) or freshly sampled per round (self masks).

:func:`add_masks` works chunk by chunk so that each keystream block is added while it is still in cache, and
never allocates per mask: the cost is the AES work plus one in-cache add per mask.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
CHUNK_WORDS = 1 << 15  # 128 KiB of keystream per step: fits L2 together with the accumulator slice
_ZERO_IV = bytes(16)
_ZEROS = bytes(4 * CHUNK_WORDS)

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("secure_agg.prg assumes a little-endian host (uint32 views of the keystream)")


def _encryptor(seed: bytes) -> CipherContext:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seeds are {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()


def expand(seed: bytes, n_words: int) -> np.ndarray:
    """The first ``n_words`` uint32 words of the seed's keystream (a fresh array)."""
    out = np.zeros(n_words, dtype=np.uint32)
    add_masks(out, plus=[seed])
    return out


def add_masks(out: np.ndarray, plus: Sequence[bytes] = (), minus: Sequence[bytes] = ()) -> None:
    """``out += Σ PRG(p) − Σ PRG(m)`` (mod 2^32) in place, each stream starting at word 0 of ``out``."""
    if out.dtype != np.uint32 or out.ndim != 1 or not out.flags.c_contiguous:
        raise ValueError("add_masks needs a contiguous 1-D uint32 array")
    if not plus and not minus:
        return
    n = out.shape[0]
    encs_plus = [_encryptor(s) for s in plus]
    encs_minus = [_encryptor(s) for s in minus]
    scratch = np.empty(CHUNK_WORDS + 4, dtype=np.uint32)  # update_into wants 15 bytes of headroom
    scratch_bytes = scratch.data.cast("B")
    zeros = memoryview(_ZEROS)
    for start in range(0, n, CHUNK_WORDS):
        stop = min(start + CHUNK_WORDS, n)
        width = stop - start
        nbytes = 4 * width
        block = out[start:stop]
        ks = scratch[:width]
        for enc in encs_plus:
            enc.update_into(zeros[:nbytes], scratch_bytes[: nbytes + 15])
            np.add(block, ks, out=block)
        for enc in encs_minus:
            enc.update_into(zeros[:nbytes], scratch_bytes[: nbytes + 15])
            np.subtract(block, ks, out=block)
