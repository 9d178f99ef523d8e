"""Session fixtures shared by the trainer tests: the real SmolLM2 tokenizer and the tiny random model."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the test suite may reach a hub

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainer.model import load_base_model, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """The real SmolLM2 tokenizer (cached on disk after the first extraction from the GGUF)."""
    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., PreTrainedModel]:
    """Builds a fresh tiny Llama per call (``factory(seed=0)``), so tests can mutate it freely."""

    def factory(seed: int = 0) -> PreTrainedModel:
        return load_base_model("tiny", seed=seed)

    return factory
