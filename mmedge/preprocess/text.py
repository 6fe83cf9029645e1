"""Text through Hugging Face ``tokenizers``: int64 ids and attention mask, padded to a bucket."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.errors import InputSpecError, require
from mmedge.preprocess.buckets import smallest_holding
from mmedge.preprocess.errors import SampleError, naming
from mmedge.preprocess.spec import TextPrep


def load_tokenizer(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` from tokenizer.json, or from a WordPiece vocab.txt (BERT-style
    normalization, [CLS]/[SEP]). Errors name the file and what was expected."""
    require("tokenizers", "calib")
    from tokenizers import Tokenizer

    if not path.is_file():
        raise InputSpecError(f"tokenizer file not found: {path}")
    try:
        if path.suffix == ".json":
            return Tokenizer.from_file(str(path))
        from tokenizers.implementations import BertWordPieceTokenizer  # type: ignore[attr-defined]

        # BaseTokenizer wraps a Tokenizer; its JSON form gives us the plain Tokenizer.
        return Tokenizer.from_str(BertWordPieceTokenizer(str(path)).to_str())
    except Exception as err:  # tokenizers raises plain Exception subclasses from Rust
        raise InputSpecError(
            f"tokenizer {path} does not load: {err}",
            hint="expected a tokenizers tokenizer.json, or a vocab.txt with one token per line",
        ) from None


class TextField:
    def __init__(self, spec: TextPrep, buckets: Sequence[int], tokenizer: Any) -> None:
        self.spec = spec
        self.buckets = sorted(buckets)
        self.tokenizer = tokenizer
        tokenizer.no_padding()  # padding is ours: to a bucket, not to the batch's longest
        tokenizer.enable_truncation(min(spec.max_length, self.buckets[-1]))
        self.pad_id = spec.pad_id if spec.pad_id is not None else _pad_id(tokenizer)
        self.truncated = 0

    @property
    def inputs(self) -> list[str]:
        return self.spec.input_names()

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def _encode(self, value: Path | str) -> tuple[list[int], bool]:
        if isinstance(value, Path):
            try:
                value = value.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise SampleError(f"cannot read text: {naming(value, err)}") from None
        encoding = self.tokenizer.encode(
            value.strip(), add_special_tokens=self.spec.add_special_tokens
        )
        ids: list[int] = encoding.ids
        if not ids:
            raise SampleError("text is empty after tokenization")
        return ids, bool(encoding.overflowing)

    def length(self, value: Path | str) -> int | None:
        return len(self._encode(value)[0])

    def bucket(self, length: int) -> int:
        return smallest_holding(self.buckets, length)

    def process(self, value: Path | str, bucket: int | None) -> dict[str, np.ndarray]:
        ids, cut = self._encode(value)
        self.truncated += cut  # reported: text beyond max_length never reaches the model
        size = bucket if bucket is not None else self.bucket(len(ids))
        ids = ids[:size]
        out = np.full(size, self.pad_id, np.int64)
        out[: len(ids)] = ids
        arrays = {self.spec.ids: out}
        if self.spec.mask:
            mask = np.zeros(size, np.int64)
            mask[: len(ids)] = 1
            arrays[self.spec.mask] = mask
        return arrays

    def zeros(self, bucket: int | None) -> dict[str, np.ndarray]:
        size = bucket if bucket is not None else self.buckets[0]
        arrays = {self.spec.ids: np.full(size, self.pad_id, np.int64)}
        if self.spec.mask:
            arrays[self.spec.mask] = np.zeros(size, np.int64)
        return arrays


def _pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>", "<PAD>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0
