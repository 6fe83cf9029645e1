"""Audio through soundfile (WAV, FLAC, OGG): mono, sample rate, bucketed length, log-mel."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from math import gcd
from pathlib import Path

import numpy as np

from mmedge.errors import require
from mmedge.preprocess.buckets import nearest
from mmedge.preprocess.errors import SampleError, naming
from mmedge.preprocess.spec import AudioPrep, LogMel


def mel_filterbank(cfg: LogMel, sample_rate: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale."""

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    fmax = cfg.fmax if cfg.fmax is not None else sample_rate / 2
    edges = hz(np.linspace(mel(np.array(cfg.fmin)), mel(np.array(fmax)), cfg.n_mels + 2))
    freqs = np.fft.rfftfreq(cfg.n_fft, 1.0 / sample_rate)
    bank = np.zeros((cfg.n_mels, freqs.size), np.float32)
    for m in range(cfg.n_mels):
        lo, mid, hi = edges[m : m + 3]
        bank[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return bank


def frames_for(samples: int, cfg: LogMel) -> int:
    return 0 if samples < cfg.n_fft else (samples - cfg.n_fft) // cfg.hop + 1


def samples_for(frames: int, cfg: LogMel) -> int:
    return (frames - 1) * cfg.hop + cfg.n_fft


def log_mel(wave: np.ndarray, cfg: LogMel, bank: np.ndarray) -> np.ndarray:
    """(samples,) → (n_mels, frames) float32; symmetric Hann window (``numpy.hanning``)."""
    frames = np.lib.stride_tricks.sliding_window_view(wave, cfg.n_fft)[:: cfg.hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(cfg.n_fft), axis=-1)) ** 2
    feats = np.log(power @ bank.T + cfg.log_offset).T
    if cfg.normalize == "utterance":
        feats = (feats - feats.mean()) / (feats.std() + 1e-6)
    out: np.ndarray = feats.astype(np.float32)
    return out


_UNKNOWN_SIZE = 0xFFFFFFFF  # a data chunk written by a stream that could not seek back


def _check_wav_header(path: Path | str) -> None:
    """Raise SampleError when a RIFF WAVE file holds less audio than its header declares.

    libsndfile sizes a WAV by the bytes present, not by its header: a truncated copy reads as a
    shorter clip and passes, silently. So compare the data chunk's declared size with what the
    file holds. A format chunk without a data chunk after it is an empty file (libsndfile's own
    message says only "No 'data' chunk marker"). Anything that is not a plain RIFF/RIFX WAVE
    (FLAC, OGG, RF64, garbage) is left to libsndfile, which reports what it cannot read.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:] != b"WAVE":
                return
            order = "<" if head[:4] == b"RIFF" else ">"
            size = os.fstat(f.fileno()).st_size
            align = 0  # bytes per frame (all channels), from the format chunk
            position = 12
            while position + 8 <= size:
                f.seek(position)
                chunk, length = struct.unpack(order + "4sI", f.read(8))
                if chunk == b"fmt ":
                    fmt = f.read(16)
                    if len(fmt) >= 14:
                        (align,) = struct.unpack(order + "H", fmt[12:14])
                elif chunk == b"data":
                    held = size - position - 8
                    if align and length != _UNKNOWN_SIZE and length > held:
                        raise SampleError(
                            f"{path} is truncated: header declares {length // align} frames, "
                            f"file holds {held // align}"
                        )
                    return
                position += 8 + length + (length & 1)  # chunks are padded to even sizes
    except (OSError, struct.error):
        return  # unreadable: libsndfile says why, naming the file
    if align:
        raise SampleError(f"{path} holds no audio samples: its header has no 'data' chunk")


def _first_frame(path: Path | str) -> bool:
    """Whether the file yields at least one frame when read."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            return len(f.read(1)) > 0
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False


class AudioField:
    def __init__(self, spec: AudioPrep, buckets: Sequence[int]) -> None:
        require("soundfile", "calib")
        self.spec = spec
        self.buckets = sorted(buckets)
        self.bank = mel_filterbank(spec.log_mel, spec.sample_rate)

    @property
    def inputs(self) -> list[str]:
        return [self.spec.input]

    def _info(self, path: Path | str) -> tuple[int, int]:
        """(sample rate, frames) from the header; a rate the recipe cannot take is an error."""
        import soundfile as sf

        _check_wav_header(path)
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise SampleError(f"cannot read audio: {naming(path, err)}") from None
        if info.frames <= 0 and not _first_frame(path):
            # A header-only file would become a clip of zero padding. (0 frames can also mean
            # "length unknown", as in a FLAC stream, hence the one-frame read to tell.)
            raise SampleError(f"{path} holds no audio samples (its header declares 0 frames)")
        if info.samplerate != self.spec.sample_rate and not self.spec.resample:
            raise SampleError(
                f"sample rate {info.samplerate} Hz, expected {self.spec.sample_rate} Hz "
                "(set resample: true to convert)"
            )
        return int(info.samplerate), int(info.frames)

    def _units(self, samples: int) -> int:
        """A clip's length in the model input's time unit."""
        if self.spec.features == "waveform":
            return samples
        return frames_for(samples, self.spec.log_mel)

    def length(self, value: Path | str) -> int | None:
        rate, frames = self._info(value)
        return self._units(round(frames * self.spec.sample_rate / rate))

    def bucket(self, length: int) -> int:
        return nearest(self.buckets, length)

    def _needed(self, bucket: int) -> int:
        if self.spec.features == "waveform":
            return bucket
        return samples_for(bucket, self.spec.log_mel)

    def process(self, value: Path | str, bucket: int | None) -> dict[str, np.ndarray]:
        import soundfile as sf

        rate, frames = self._info(value)
        try:
            data, _ = sf.read(str(value), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise SampleError(f"cannot read audio: {naming(value, err)}") from None
        if len(data) < frames:  # FLAC/OGG declare a length too; fewer samples: a cut file
            raise SampleError(
                f"{value} is truncated: header declares {frames} frames, file holds {len(data)}"
            )
        wave = data.mean(axis=1)  # mono: the channels' mean
        if rate != self.spec.sample_rate:
            from scipy.signal import resample_poly

            g = gcd(rate, self.spec.sample_rate)
            wave = resample_poly(wave, self.spec.sample_rate // g, rate // g).astype(np.float32)
        if not np.isfinite(wave).all():
            raise SampleError("audio holds NaN or Inf samples")
        size = bucket if bucket is not None else self.bucket(self._units(wave.size))
        needed = self._needed(size)
        wave = np.pad(wave, (0, max(0, needed - wave.size)))[:needed]  # zero-pad or trim the end
        if self.spec.features == "waveform":
            return {self.spec.input: wave.astype(np.float32)}
        return {self.spec.input: log_mel(wave, self.spec.log_mel, self.bank)}

    def zeros(self, bucket: int | None) -> dict[str, np.ndarray]:
        size = bucket if bucket is not None else self.buckets[0]
        if self.spec.features == "waveform":
            return {self.spec.input: np.zeros(size, np.float32)}
        return {self.spec.input: np.zeros((self.spec.log_mel.n_mels, size), np.float32)}
