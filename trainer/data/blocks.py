"""Turn examples into fixed-length token blocks with a loss mask.

Examples are tokenised, concatenated in order and cut into consecutive ``seq_len`` blocks (the
usual packing for causal-LM fine-tuning: no padding waste, every block the same shape, so a client's
batch cost is predictable). Chat examples use SmolLM2's ChatML format with the loss on the
assistant's reply only; plain text gets the loss on every token.

Chat formatting is built here rather than with ``tokenizer.apply_chat_template`` because SmolLM2's
template injects a default system prompt ("You are a helpful AI assistant named SmolLM...") whenever
the conversation has none; that would add ~20 unlearnable tokens to every example. The tokens are
otherwise identical to the template's output:
``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|>\\n``,
with labels on ``{response}<|im_end|>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from trainer.data.types import Example, TokenBlocks

IGNORE_INDEX = -100
# A trailing partial block with fewer label tokens than this is dropped: it would cost a full
# forward pass for almost no signal, and a handful of tokens makes a noisy held-out loss.
MIN_LABEL_TOKENS = 8
_TOKENIZE_BATCH = 512


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:  # the tokenizer raises on an empty batch
        return []
    # split_special_tokens: a literal "<|im_end|>" typed by a chat user must stay text, not end the turn.
    out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return [list(ids) for ids in out]


def _token_stream(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example, tokenised in batches (the fast tokenizer is much faster so)."""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = tokenizer.eos_token_id
    if not isinstance(im_start, int) or not isinstance(im_end, int) or eos is None:
        raise ValueError("tokenizer lacks <|im_start|>/<|im_end|>/eos; build_blocks expects SmolLM2's")
    newline, assistant = _encode(tokenizer, ["\n", "assistant\n"])
    for start in range(0, len(examples), _TOKENIZE_BATCH):
        batch = examples[start : start + _TOKENIZE_BATCH]
        users = _encode(tokenizer, [f"user\n{e.prompt}" for e in batch if e.prompt is not None])
        responses = _encode(tokenizer, [e.response for e in batch])
        user_iter = iter(users)
        for ex, resp in zip(batch, responses, strict=True):
            if ex.prompt is None:
                ids = [*resp, eos]
                yield ids, list(ids)
                continue
            head = [im_start, *next(user_iter), im_end, *newline, im_start, *assistant]
            body = [*resp, im_end]
            yield (
                head + body + newline,
                [IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(newline),
            )


def build_blocks(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    max_blocks: int | None = None,
) -> TokenBlocks:
    """Pack ``examples`` (in order) into [N, seq_len] blocks; deterministic.

    A block that carries no label token at all (possible when a long prompt fills it) is skipped,
    since it contributes nothing but would give a NaN loss if it formed a batch alone. The final
    partial block is padded (pad id, label -100, attention 0) and kept only with at least
    ``MIN_LABEL_TOKENS`` label tokens. Tokenisation stops once ``max_blocks`` blocks exist, so a
    capped held-out set is cheap even for a large client.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if max_blocks is not None and max_blocks < 0:
        raise ValueError(f"max_blocks must be >= 0, got {max_blocks}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    blocks_ids: list[list[int]] = []
    blocks_labels: list[list[int]] = []
    ids_buf: list[int] = []
    lab_buf: list[int] = []

    def full() -> bool:
        return max_blocks is not None and len(blocks_ids) >= max_blocks

    for ids, labels in _token_stream(examples, tokenizer):
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
        blocks_ids.append(ids_buf + [pad] * n_pad)
        blocks_labels.append(lab_buf + [IGNORE_INDEX] * n_pad)
        masks.append([1] * len(ids_buf) + [0] * n_pad)

    def tensor(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)

    return TokenBlocks(tensor(blocks_ids), tensor(blocks_labels), tensor(masks))
