"""Deterministic tri-modal data for the reference model: one digit label, three corrupted views.

- image: real handwritten digit scans (scikit-learn's ``load_digits``, shipped here as
  ``digits.npz`` so nothing is downloaded), upsampled to 32x32, shifted, noised and occluded;
- audio: DTMF tone pairs for the digit (telephone keypad frequencies) in short bursts, with a
  distractor digit's tones, frequency jitter and loud noise, as normalized log-mel frames;
- text: filler tokens with zero to two of the digit's word tokens and possibly a distractor
  digit's word, padded, with an int64 attention mask.

Each view alone is ambiguous often enough that no branch reaches the fused accuracy. Images of
the train and held-out splits never overlap; every function takes an explicit generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.preprocess.audio import log_mel as features
from mmedge.preprocess.audio import mel_filterbank
from mmedge.preprocess.spec import LogMel

Feeds = dict[str, np.ndarray]
_DIGITS = Path(__file__).with_name("digits.npz")

IMAGE_SIZE = 32
SAMPLE_RATE = 8000
N_FFT = 256
HOP = 128
N_MELS = 32
VOCAB = 128
PAD = 0
_DIGIT_TOKEN0 = 2  # three word tokens per digit: 2..31 ("seven", "7", "VII"-style variants)
_FILLER0 = 32  # fillers: 32..127
# Keypad (row Hz, column Hz) for digits 0..9.
_DTMF = {
    0: (941, 1336),
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (n, 8, 8) uint8 in 0..16
    labels: np.ndarray  # (n,) int64


@cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    with np.load(_DIGITS) as npz:
        return npz["images"], npz["labels"]


def split(name: str) -> Split:
    """``train`` (70% of the scans) or ``heldout`` (the other 30%), fixed by seed 0."""
    images, labels = _load()
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.7 * len(labels))
    idx = {"train": order[:cut], "heldout": order[cut:]}[name]
    return Split(images[idx], labels[idx])


def image_view(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 8, 8) scans → (n, 1, 32, 32) float32, shifted, noised, partly occluded."""
    n = digits.shape[0]
    big = np.kron(digits.astype(np.float32) / 16.0, np.ones((4, 4), np.float32))
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for i in range(n):
        dy, dx = rng.integers(-4, 5, size=2)
        out[i] = np.roll(big[i], (dy, dx), axis=(0, 1))
        if rng.random() < 0.5:  # an occluding patch hides part of the stroke
            size = int(rng.integers(10, 18))
            y, x = rng.integers(0, IMAGE_SIZE - size, size=2)
            out[i, y : y + size, x : x + size] = rng.random()
    out += rng.normal(0.0, 0.5, out.shape).astype(np.float32)
    return ((out - 0.3) / 0.8)[:, None]


# The reference model's features: the same log-mel as `mmedge calib build` computes
# (mmedge/preprocess/audio.py), so shards built from its WAVs match the training data.
LOG_MEL = LogMel(n_fft=N_FFT, hop=HOP, n_mels=N_MELS, fmin=50.0)


def log_mel(waves: np.ndarray) -> np.ndarray:
    """(n, samples) → (n, N_MELS, frames) log-mel, normalized per utterance."""
    bank = mel_filterbank(LOG_MEL, SAMPLE_RATE)
    return np.stack([features(w, LOG_MEL, bank) for w in waves])


def samples_for(frames: int) -> int:
    return (frames - 1) * HOP + N_FFT


def _burst(wave: np.ndarray, digit: int, rng: np.random.Generator, gain: float) -> None:
    n = wave.size
    length = int(rng.uniform(0.12, 0.3) * n)
    start = int(rng.integers(0, n - length))
    t = np.arange(length) / SAMPLE_RATE
    for freq in _DTMF[digit]:
        f = freq * rng.uniform(0.97, 1.03)
        wave[start : start + length] += gain * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))


def audio_waves(labels: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) labels → (n, samples) float32 waveforms at SAMPLE_RATE."""
    waves = rng.normal(0.0, 1.0, (labels.size, samples_for(frames)))
    for i, label in enumerate(labels):
        if rng.random() < 0.9:
            _burst(waves[i], int(label), rng, gain=rng.uniform(0.15, 0.6))
        if rng.random() < 0.5:  # a distractor digit's tones, sometimes louder
            _burst(waves[i], int(rng.integers(0, 10)), rng, gain=rng.uniform(0.1, 0.45))
    return waves.astype(np.float32)


def text_tokens(labels: np.ndarray, seq: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(n,) labels → int64 ``input_ids`` and ``attention_mask`` of shape (n, seq)."""
    n = labels.size
    ids = np.zeros((n, seq), np.int64)
    mask = np.zeros((n, seq), np.int64)
    for i, label in enumerate(labels):
        length = int(rng.integers(max(4, seq // 2), seq + 1))
        row = rng.integers(_FILLER0, VOCAB, size=length)
        words = [int(label)] * int(rng.choice(3, p=[0.3, 0.45, 0.25]))
        words += [int(rng.integers(0, 10))] * int(rng.choice(2, p=[0.6, 0.4]))
        for pos, digit in zip(rng.permutation(length), words, strict=False):
            row[pos] = _DIGIT_TOKEN0 + 3 * digit + int(rng.integers(0, 3))
        ids[i, :length] = row
        mask[i, :length] = 1
    return ids, mask


def make_batch(
    data: Split, idx: np.ndarray, seq: int, frames: int, rng: np.random.Generator
) -> tuple[Feeds, np.ndarray]:
    """The four named inputs of the reference recipe for samples ``idx`` of ``data``, + labels."""
    labels = data.labels[idx]
    ids, mask = text_tokens(labels, seq, rng)
    feeds = {
        "image": _fp16_grid(image_view(data.images[idx], rng)),
        "input_ids": ids,
        "attention_mask": mask,
        "audio": _fp16_grid(log_mel(audio_waves(labels, frames, rng))),
    }
    return feeds, labels.astype(np.int64)


def _fp16_grid(x: np.ndarray) -> np.ndarray:
    # Float features rounded to FP16 precision (still float32): far below the noise, and the
    # shipped shards compress about twice as well.
    return x.astype(np.float16).astype(np.float32)


# Shards cover the dynamic axes: (seq, frames) per shard cycles through these.
SHARD_SHAPES = ((16, 48), (32, 64), (24, 96), (48, 128), (8, 32))


def write_shards(
    out: Path, data: Split, samples: int, shard_size: int, seed: int, labels: bool
) -> list[Path]:
    """Write ``samples`` samples as ``shard-NNN.npz`` files under ``out`` (see calibration/)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    idx = rng.permutation(len(data.labels))
    idx = np.resize(idx, samples)  # wraps around when more samples than scans are asked for
    written = []
    for k, start in enumerate(range(0, samples, shard_size)):
        seq, frames = SHARD_SHAPES[k % len(SHARD_SHAPES)]
        feeds, y = make_batch(data, idx[start : start + shard_size], seq, frames, rng)
        arrays = {**feeds, "label": y} if labels else feeds
        path = out / f"shard-{k:03d}.npz"
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        written.append(path)
    return written


class TrainingStream:
    """Labelled samples from the training scans with fresh corruptions on every pass, as in
    training: an mmedge data source (``prune.recover.data: {factory: ...}``) that needs no
    shipped files. Deterministic for a seed."""

    label_key = "label"

    def __init__(self, samples: int = 2048, seed: int = 7) -> None:
        self.samples = samples
        self.seed = seed
        self._passes = 0

    def batches(self, batch: int) -> Iterator[Any]:
        from mmedge.data.datasets import Batch

        rng = np.random.default_rng((self.seed, self._passes))
        self._passes += 1
        data = split("train")
        idx = np.resize(rng.permutation(len(data.labels)), self.samples)
        for k, start in enumerate(range(0, self.samples, batch)):
            seq, frames = SHARD_SHAPES[k % len(SHARD_SHAPES)]
            feeds, labels = make_batch(data, idx[start : start + batch], seq, frames, rng)
            yield Batch(feeds, labels)

    def first(self, batch: int) -> Feeds:
        feeds: Feeds = next(self.batches(batch)).feeds
        return feeds

    def limited(self, samples: int) -> TrainingStream:
        return TrainingStream(min(samples, self.samples), self.seed)

    def describe(self) -> str:
        return f"the reference training scans, freshly corrupted ({self.samples} samples, seed {self.seed})"


def training_stream(samples: int = 2048, seed: int = 7) -> TrainingStream:
    return TrainingStream(samples, seed)
