"""The reference data as raw files: PNG scans, text files, WAV clips, labels and a manifest.

The same samples ``data.write_shards`` produces (same split, seed, shard shapes and random
draws), stopped before the reference's own preprocessing: images before normalization, token
ids as words, waveforms before log-mel. ``mmedge calib build`` on these files must give back
what the shipped shards hold, up to 8-bit pixels and 16-bit audio.

    python -m mmedge.reference.raw OUT [--split train] [--samples 256] [--seed 1000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from mmedge.reference import data

# Pixels: value v (before normalization; noise puts it in about -2..3) is stored as
# (v + 2.1) / 5 * 255, clipping beyond 4 noise sigmas, so the recipe's preprocessing is scale
# 1/255, mean 0.48, std 0.16: ((p/255)*5 - 2.1 - 0.3) / 0.8 = (p/255 - 0.48) / 0.16.
_PIXEL_LOW, _PIXEL_SPAN = -2.1, 5.0
# Waveforms (noise of std 1 plus tones) are scaled into 16-bit PCM's range; the per-utterance
# normalized log-mel does not depend on the scale.
AUDIO_SCALE = 0.125

_ENGLISH = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPANISH = ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve")
_FILLERS = (
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "did",
    "number",
    "sound",
    "no",
    "most",
    "people",
    "my",
    "over",
    "know",
    "water",
    "than",
    "call",
    "first",
    "who",
    "may",
    "down",
    "side",
    "been",
    "now",
    "find",
    "any",
    "new",
    "work",
    "part",
    "take",
    "get",
    "place",
    "made",
    "live",
    "where",
    "after",
    "back",
    "little",
    "only",
    "round",
    "man",
    "year",
)


def vocabulary() -> list[str]:
    """Token strings by id: [PAD], [UNK], three words per digit (2..31), 96 fillers (32..127)."""
    words = ["[PAD]", "[UNK]"]
    for digit in range(10):
        words += [_ENGLISH[digit], str(digit), _SPANISH[digit]]
    fillers = list(_FILLERS[: data.VOCAB - len(words)])
    assert len(set(words + fillers)) == data.VOCAB, "reference vocabulary must be unique"
    return words + fillers


def tokenizer_json() -> str:
    """A ``tokenizers`` word-level tokenizer (whitespace split) over ``vocabulary()``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    text: str = tokenizer.to_str(pretty=True)
    return text + "\n"


TOKENIZER = Path(__file__).with_name("tokenizer.json")


def write_raw(
    out: Path, split: data.Split, samples: int, shard_size: int, seed: int
) -> list[dict[str, str]]:
    """Write image/, text/, audio/ (one file per sample), labels.csv and manifest.csv."""
    import soundfile as sf
    from PIL import Image

    words = vocabulary()
    for sub in ("image", "text", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    # Mirrors data.write_shards draw for draw, so the raw set is the shipped set's samples.
    rng = np.random.default_rng(seed)
    idx = np.resize(rng.permutation(len(split.labels)), samples)
    rows: list[dict[str, str]] = []
    for k, start in enumerate(range(0, samples, shard_size)):
        seq, frames = data.SHARD_SHAPES[k % len(data.SHARD_SHAPES)]
        chunk = idx[start : start + shard_size]
        labels = split.labels[chunk]
        ids, mask = data.text_tokens(labels, seq, rng)
        images = data.image_view(split.images[chunk], rng)[:, 0] * 0.8 + 0.3
        waves = data.audio_waves(labels, frames, rng)
        for j, label in enumerate(labels):
            name = f"{start + j:05d}"
            pixels = np.clip((images[j] - _PIXEL_LOW) / _PIXEL_SPAN * 255.0 + 0.5, 0, 255)
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(out / "image" / f"{name}.png")
            text = " ".join(words[t] for t in ids[j][mask[j] == 1])
            (out / "text" / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            sf.write(out / "audio" / f"{name}.wav", waves[j] * AUDIO_SCALE, data.SAMPLE_RATE)
            rows.append(
                {
                    "id": name,
                    "image": f"image/{name}.png",
                    "text": text,
                    "audio": f"audio/{name}.wav",
                    "label": str(int(label)),
                }
            )
    _write_csv(out / "labels.csv", [{"id": r["id"], "label": r["label"]} for r in rows])
    _write_csv(out / "manifest.csv", rows)
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", choices=("train", "heldout"), default="train")
    # Defaults: the shipped calibration set's (train.py: 256 samples, seed 1000 + 0).
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    rows = write_raw(args.out, data.split(args.split), args.samples, args.shard_size, args.seed)
    print(f"wrote {len(rows)} samples to {args.out}")


if __name__ == "__main__":
    main()
