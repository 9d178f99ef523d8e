"""Pack (input_ids, labels) streams into fixed-length token blocks with a loss mask.

Records are rendered (``trainer.data.render``: the model's own chat template, loss on the assistant's
turns; plain text with loss on every token), concatenated in order and cut into consecutive ``seq_len``
blocks: the usual packing for causal-LM fine-tuning. There is no padding waste, every block has the same
shape, and so a client's batch cost is predictable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.render import token_stream
from trainer.data.types import IGNORE_INDEX, LossOn, Record, TokenBlocks

__all__ = ["IGNORE_INDEX", "MIN_LABEL_TOKENS", "build_blocks", "pack_blocks"]

# A trailing partial block with fewer label tokens than this is dropped: it would cost a full
# forward pass for almost no signal, and a handful of tokens makes a noisy held-out loss.
MIN_LABEL_TOKENS = 8


def pack_blocks(
    stream: Iterable[tuple[list[int], list[int]]],
    pad_id: int,
    seq_len: int,
    max_blocks: int | None = None,
) -> TokenBlocks:
    """Pack a stream of (input_ids, labels) pairs (in order) into [N, seq_len] blocks; deterministic.

    A block that carries no label token at all (possible when a long prompt fills it) is skipped,
    since it contributes nothing but would give a NaN loss if it formed a batch alone. The final
    partial block is padded (``pad_id``, label -100, attention 0) and kept only with at least
    ``MIN_LABEL_TOKENS`` label tokens. The stream is consumed only until ``max_blocks`` blocks exist,
    so a capped held-out set is cheap even for a large client.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if max_blocks is not None and max_blocks < 0:
        raise ValueError(f"max_blocks must be >= 0, got {max_blocks}")
    blocks_ids: list[list[int]] = []
    blocks_labels: list[list[int]] = []
    ids_buf: list[int] = []
    lab_buf: list[int] = []

    def full() -> bool:
        return max_blocks is not None and len(blocks_ids) >= max_blocks

    for ids, labels in stream:
        if full():
            break
        ids_buf += ids
        lab_buf += labels
        while len(ids_buf) >= seq_len and not full():
            block_labels = lab_buf[:seq_len]
            if any(x != IGNORE_INDEX for x in block_labels):
                blocks_ids.append(ids_buf[:seq_len])
                blocks_labels.append(block_labels)
            del ids_buf[:seq_len], lab_buf[:seq_len]

    masks = [[1] * seq_len for _ in blocks_ids]
    n_tail_labels = sum(x != IGNORE_INDEX for x in lab_buf)
    if not full() and ids_buf and n_tail_labels >= MIN_LABEL_TOKENS:
        n_pad = seq_len - len(ids_buf)
        blocks_ids.append(ids_buf + [pad_id] * n_pad)
        blocks_labels.append(lab_buf + [IGNORE_INDEX] * n_pad)
        masks.append([1] * len(ids_buf) + [0] * n_pad)

    def tensor(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)

    return TokenBlocks(tensor(blocks_ids), tensor(blocks_labels), tensor(masks))


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad token id, else eos (SmolLM2 has both as ``<|im_end|>``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad the last block with")
    return int(pad)


def build_blocks(
    examples: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_blocks: int | None = None,
    loss_on: LossOn = "response",
) -> TokenBlocks:
    """Render ``examples`` with ``tokenizer`` and pack them (see ``pack_blocks``).

    ``Example(prompt, response)`` is the chat [user prompt, assistant response]; ``prompt=None`` is
    plain text. Rendering is lazy, so ``max_blocks`` also bounds the tokenisation work.
    """
    stream = token_stream(examples, tokenizer, loss_on)
    return pack_blocks(stream, pad_id_of(tokenizer), seq_len, max_blocks)
