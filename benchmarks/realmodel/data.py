"""Realistic, labelled tri-modal samples for the real model, written as mmedge .npz shards.

The task: a digit class 0-9 that all three modalities speak of, each on its own evidence.

- image: a real handwritten digit scan (scikit-learn's digits, 8x8) drawn in a random ink,
  size and angle over a random crop of a real photograph (scikit-learn's sample images), 48x48;
- text: an English sentence from templates and a vocabulary that states a count, as a word
  ("seven") or a numeral ("7"), tokenized with all-MiniLM-L6-v2's own WordPiece tokenizer;
- audio: a 16 kHz harmonic tone (random timbre, vibrato, envelope, sometimes a second note)
  whose pitch is the class's note of a scale, in white or pink noise, cut into 1024-sample
  frames (CREPE's).

Each modality is independently *uninformative* with probability 0.3 (a faint, noisy scan; a
vague count such as "several"; noise without the tone), so the head must fuse branches and some
samples stay ambiguous: their logits have small margins, as real data's do, which is where INT8
error changes predictions.

``python -m benchmarks.realmodel.data OUT_DIR`` writes ``OUT_DIR/calib`` (256 samples) and
``OUT_DIR/eval`` (256 samples with ``label``), deterministically; shards cycle through sequence
lengths and frame counts so calibration covers the dynamic axes. Training samples
(``benchmarks.realmodel.train``) come from other digit scans than the eval split's.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from benchmarks.realmodel.model import FRAME, IMAGE_SIZE, SAMPLE_RATE, tokenizer_path

UNINFORMATIVE = 0.3
SHARD = 32
# (minimum padded sequence length, frames) per shard, in turn: covers the recipe's axes.
SHAPES = ((16, 4), (32, 2), (48, 8), (64, 1), (24, 6), (32, 4), (40, 3), (64, 8))
# Digit scans per split: training never sees the calibration or eval scans.
SCANS = {"train": (0, 1200), "calib": (1200, 1500), "eval": (1500, 1797)}
SEEDS = {"train": 101, "calib": 202, "eval": 303}
# The class's note (MIDI): a C-major scale from G3 (196 Hz) to B4 (494 Hz).
NOTES = (55, 57, 59, 60, 62, 64, 65, 67, 69, 71)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VAGUE = ("some", "a few", "several", "many", "a couple of", "a handful of", "plenty of", "no more")
NAMES = (
    "Maria", "James", "Aisha", "Chen", "Olivia", "Tom", "Priya", "Lucas", "Fatima", "Noah",
    "Grace", "Diego", "Hannah", "Kenji", "Sofia", "Ben", "Amara", "Ivan", "Leila", "Sam",
)  # fmt: skip
NOUNS = (
    ("apple", "apples"), ("ticket", "tickets"), ("parcel", "parcels"), ("chair", "chairs"),
    ("bird", "birds"), ("book", "books"), ("bottle", "bottles"), ("candle", "candles"),
    ("student", "students"), ("truck", "trucks"), ("letter", "letters"), ("cup", "cups"),
    ("lamp", "lamps"), ("boat", "boats"), ("tree", "trees"), ("coin", "coins"),
    ("window", "windows"), ("photo", "photos"), ("key", "keys"), ("table", "tables"),
)  # fmt: skip
PLACES = (
    "kitchen", "station", "garden", "library", "office", "market", "harbour", "classroom",
    "warehouse", "hallway", "bakery", "museum", "parking lot", "train", "attic", "clinic",
)  # fmt: skip
TIMES = (
    "this morning", "last night", "on Monday", "before lunch", "after the meeting",
    "yesterday", "at noon", "during the storm", "on the weekend", "this afternoon",
)  # fmt: skip
TEMPLATES = (
    "{name} counted {num} {noun} in the {place} {time}.",
    "There were {num} {noun} near the {place} {time}.",
    "We still need {num} more {noun} for the {place}.",
    "The report lists {num} {noun} missing from the {place}.",
    "{name} said the {place} had {num} {noun} left {time}.",
    "{time_cap}, {name} found {num} {noun} under a bench in the {place}.",
    "Please bring {num} {noun} to the {place} {time}.",
    "I think {name} saw {num} {noun} outside the {place}.",
    "Only {num} {noun} were delivered to the {place} {time}.",
    "According to {name}, the {place} ordered {num} {noun} {time}.",
    "Did you notice the {num} {noun} by the {place} door?",
    "{name} painted {num} {noun} for the {place} {time}.",
)


@dataclass(frozen=True)
class Sample:
    """One sample before batching: its three modalities, label and which were uninformative."""

    image: np.ndarray  # (3, 48, 48) float32, (x - 127.5) / 128
    ids: list[int]
    audio: np.ndarray  # (samples,) float32 waveform
    label: int
    dropped: tuple[bool, bool, bool]


@cache
def _sources() -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Digit scans (0..1), their labels, and the photographs; all ship in scikit-learn."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    photos = tuple(np.asarray(im, dtype=np.uint8) for im in load_sample_images().images)
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64), photos


@cache
def tokenizer() -> Tokenizer:
    """The text branch's own tokenizer, without its fixed padding to 128 (shards pad)."""
    tok = Tokenizer.from_file(str(tokenizer_path()))
    tok.no_padding()
    tok.enable_truncation(64)
    return tok


def _image(rng: np.random.Generator, scan: np.ndarray, faint: bool) -> np.ndarray:
    _, _, photos = _sources()
    photo = photos[rng.integers(len(photos))]
    h, w, _ = photo.shape
    side = int(rng.integers(64, 200))
    top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    background = np.asarray(
        crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), np.float32
    )
    # Large and near the centre, as a crop from a detector would give it.
    size = int(rng.integers(36, 47))
    glyph = Image.fromarray((scan * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    glyph = glyph.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR)
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    centre = (IMAGE_SIZE - size) // 2
    y, x = (int(np.clip(centre + rng.integers(-3, 4), 0, IMAGE_SIZE - size)) for _ in range(2))
    alpha[y : y + size, x : x + size] = np.asarray(glyph, np.float32) / 255.0
    alpha *= rng.uniform(0.12, 0.3) if faint else rng.uniform(0.8, 1.0)
    # Ink that contrasts with the photo, as on a legible sign.
    dark = background.mean() > 110
    ink = rng.uniform(0, 60, 3) if dark else rng.uniform(200, 255, 3)
    out = background * (1 - alpha[..., None]) + ink * alpha[..., None]
    out += rng.normal(0, 28 if faint else rng.uniform(2, 8), out.shape)
    out = np.clip(out, 0, 255)
    return ((out.transpose(2, 0, 1) - 127.5) / 128.0).astype(np.float32)


def _sentence(rng: np.random.Generator, label: int, vague: bool) -> str:
    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    singular, plural = NOUNS[int(rng.integers(len(NOUNS)))]
    if vague:
        num, noun = pick(VAGUE), plural
    else:
        num = WORDS[label] if rng.random() < 0.7 else str(label)
        noun = singular if label == 1 else plural
    time_ = pick(TIMES)
    text = pick(TEMPLATES).format(
        name=pick(NAMES), num=num, noun=noun, place=pick(PLACES), time=time_,
        time_cap=time_[0].upper() + time_[1:],
    )  # fmt: skip
    return text[0].upper() + text[1:]


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.normal(0, 1, n)
    if rng.random() < 0.5:
        return white
    # Pink-ish: 1/f amplitude shaping in the frequency domain.
    spectrum = np.fft.rfft(white)
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    pink = np.fft.irfft(spectrum, n)
    return pink / (pink.std() + 1e-12)


def _tone(rng: np.random.Generator, midi: float, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    f0 = 440.0 * 2 ** ((midi - 69 + rng.uniform(-0.2, 0.2)) / 12)
    vibrato = rng.uniform(0, 15) / 1200 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    phase = 2 * np.pi * np.cumsum(f0 * 2**vibrato) / SAMPLE_RATE
    rolloff = rng.uniform(0.8, 2.5)
    odd_only = rng.random() < 0.3
    wave = np.zeros(n)
    for k in range(1, 9):
        if odd_only and k % 2 == 0:
            continue
        wave += k**-rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    onset = int(rng.uniform(0, 0.1) * n)
    attack = max(int(rng.uniform(0.005, 0.04) * SAMPLE_RATE), 1)
    env = np.zeros(n)
    tail = np.arange(n - onset)
    env[onset:] = np.minimum(tail / attack, 1.0) * np.exp(-tail / SAMPLE_RATE * rng.uniform(0, 3))
    return wave * env


def _audio(rng: np.random.Generator, label: int, frames: int, silent: bool) -> np.ndarray:
    n = frames * FRAME
    noise = _noise(rng, n)
    if silent:
        signal = np.zeros(n)
    else:
        signal = _tone(rng, NOTES[label], n)
        if rng.random() < 0.25:  # a quieter second note a fourth or fifth below
            signal += 10 ** (-12 / 20) * _tone(rng, NOTES[label] - rng.choice([5, 7]), n)
    snr_db = rng.uniform(5, 25)
    power = float(np.mean(signal**2))
    noise *= np.sqrt(power / 10 ** (snr_db / 10)) if power > 0 else 1.0
    mix = signal + noise
    return (mix / (np.abs(mix).max() + 1e-9) * rng.uniform(0.1, 0.9)).astype(np.float32)


def samples(split: str, count: int, frames: list[int]) -> list[Sample]:
    """``count`` samples of a split, sample i with ``frames[i]`` audio frames; seeded."""
    scans, labels, _ = _sources()
    lo, hi = SCANS[split]
    rng = np.random.default_rng(SEEDS[split])
    order = rng.permutation(np.arange(lo, hi))
    tok = tokenizer()
    out = []
    for i in range(count):
        index = int(order[i % len(order)])
        label = int(labels[index])
        dropped = tuple(bool(d) for d in rng.random(3) < UNINFORMATIVE)
        image = _image(rng, scans[index], dropped[0])
        ids = tok.encode(_sentence(rng, label, dropped[1])).ids
        audio = _audio(rng, label, frames[i], dropped[2])
        out.append(Sample(image, ids, audio, label, (dropped[0], dropped[1], dropped[2])))
    return out


def batch(items: list[Sample], seq: int) -> dict[str, np.ndarray]:
    """Named model inputs (and ``label``) for samples of one frame count, padded to ``seq``."""
    seq = max(seq, max(len(s.ids) for s in items))
    ids = np.zeros((len(items), seq), np.int64)  # [PAD] is id 0
    for row, s in enumerate(items):
        ids[row, : len(s.ids)] = s.ids
    return {
        "image": np.stack([s.image for s in items]),
        "input_ids": ids,
        "attention_mask": (ids != 0).astype(np.int64),
        "audio": np.stack([s.audio.reshape(-1, FRAME) for s in items]),
        "label": np.array([s.label for s in items], np.int64),
    }


def write_split(split: str, out: Path, count: int, labelled: bool) -> dict[str, object]:
    """Shards of ``SHARD`` samples, shapes cycling through ``SHAPES``; returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.npz"):
        old.unlink()
    shapes = [SHAPES[(i // SHARD) % len(SHAPES)] for i in range(count)]
    items = samples(split, count, [frames for _, frames in shapes])
    shards: list[dict[str, int]] = []
    for k, start in enumerate(range(0, count, SHARD)):
        arrays = batch(items[start : start + SHARD], shapes[start][0])
        if not labelled:
            arrays.pop("label")
        np.savez_compressed(out / f"shard-{k:03d}.npz", **arrays)
        shards.append({"seq": arrays["input_ids"].shape[1], "frames": arrays["audio"].shape[1]})
    dropped = np.array([s.dropped for s in items]).mean(0).tolist()
    summary: dict[str, object] = {
        "split": split,
        "samples": count,
        "labelled": labelled,
        "shards": shards,
        "uninformative": dict(zip(("image", "text", "audio"), dropped, strict=True)),
        "labels": np.bincount([s.label for s in items], minlength=10).tolist(),
    }
    (out / "manifest.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write calib/ and eval/ under")
    parser.add_argument("--samples", type=int, default=256, help="samples per split")
    args = parser.parse_args()
    start = time.perf_counter()
    for split, labelled in (("calib", False), ("eval", True)):
        info = write_split(split, args.out / split, args.samples, labelled)
        print(f"{args.out / split}: {info['samples']} samples, shards {info['shards']}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
