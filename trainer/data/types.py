"""Plain data types shared by the corpus loaders, the block builder and the training loop.

Text (``Example``/``ClientText``) is kept separate from tokens (``TokenBlocks``/``ClientDataset``) so the
expensive corpus parsing can be cached independently of the tokenizer and block length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100  # the label of a token that carries no loss (PyTorch's cross-entropy default)
LossOn = Literal["response", "all"]


@dataclass(frozen=True)
class Example:
    """One training example. ``prompt is None`` means plain LM text (loss on every token);
    otherwise a chat exchange with the loss on the response only."""

    prompt: str | None
    response: str


@dataclass(frozen=True)
class Message:
    """One chat turn; ``role`` is whatever the chat template accepts (system, user, assistant, ...)."""

    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """A multi-turn chat record: with ``loss_on="response"`` only the assistant turns carry loss."""

    messages: tuple[Message, ...]


# What the renderer turns into tokens: a prompt/response pair (or plain text) or a whole conversation.
Record = Example | Conversation


class DataError(ValueError):
    """A user's data file cannot be trained on; the message names the file, line, record or fields."""


@dataclass(frozen=True)
class ClientText:
    """A federated client's raw text, already split into train and held-out examples."""

    client_id: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]


@dataclass(frozen=True)
class TokenBlocks:
    """Fixed-length token blocks: LongTensors of shape [N, seq_len]; ``labels`` is -100 where no loss."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (self.input_ids, self.labels, self.attention_mask)}
        if len(shapes) != 1 or self.input_ids.dim() != 2:
            raise ValueError(f"TokenBlocks tensors must share one [N, seq_len] shape, got {shapes}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def select(self, idx: torch.Tensor | list[int]) -> TokenBlocks:
        """The blocks at ``idx`` (in that order), e.g. a mini-batch drawn by the training loop."""
        index = torch.as_tensor(idx, dtype=torch.long)
        return TokenBlocks(self.input_ids[index], self.labels[index], self.attention_mask[index])


@dataclass(frozen=True)
class ClientDataset:
    """A client's tokenised data: all its train blocks and a capped, fixed set of held-out blocks."""

    client_id: str
    train: TokenBlocks
    heldout: TokenBlocks
    num_train_examples: int
