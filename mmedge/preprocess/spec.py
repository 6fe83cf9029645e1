"""The recipe's ``preprocess`` section: how one raw field of a sample becomes model inputs.

Keys of the section are *fields* of a sample (a folder per field, or a manifest column); each
entry names its kind and the model input(s) it fills. The same specs, resolved, are written as
``preprocess.json`` beside a calibration set so the deploy side applies exactly what was
calibrated. Pydantic models only; the work is in ``image.py``, ``text.py``, ``audio.py``.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PosInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Spec(_Strict):
    # 'error': a sample without this field is a bad sample. 'zeros': the model copes with a
    # missing modality, so its inputs are zero-filled (and the sample kept).
    missing: Literal["error", "zeros"] = "error"
    # Fraction of the chosen samples built with this modality zeroed, so calibration sees the
    # missing-modality path too; only for models that support it (missing: zeros).
    drop: Fraction = 0.0

    @model_validator(mode="after")
    def _drop_needs_zeros(self) -> _Spec:
        if self.drop > 0 and self.missing != "zeros":
            raise ValueError("drop > 0 needs missing: zeros (the model must cope with it)")
        return self

    @abstractmethod  # pydantic's model metaclass is an ABCMeta: subclasses must define it
    def input_names(self) -> list[str]:
        """The model inputs this field fills."""


class ImagePrep(_Spec):
    """Pillow: decode, colour mode, resize (and centre crop), scale, mean/std, layout."""

    kind: Literal["image"]
    input: str
    size: tuple[PosInt, PosInt]  # (height, width) given to the model
    # Shorter side resized to this, then a centre crop to `size`; None resizes straight to `size`.
    resize_shorter: PosInt | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    mode: Literal["L", "RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])

    @model_validator(mode="after")
    def _channels(self) -> ImagePrep:
        channels = 1 if self.mode == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise ValueError(
                    f"{name} has {len(values)} values; mode {self.mode} has {channels} channel(s)"
                )
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")
        if self.resize_shorter is not None and self.resize_shorter < max(self.size):
            raise ValueError(f"resize_shorter {self.resize_shorter} is below size {self.size}")
        return self

    def input_names(self) -> list[str]:
        return [self.input]


class TextPrep(_Spec):
    """``tokenizers`` from a tokenizer.json (or a WordPiece vocab.txt): int64 ids + mask."""

    kind: Literal["text"]
    tokenizer: Path
    ids: str = "input_ids"
    mask: str | None = "attention_mask"
    max_length: PosInt
    add_special_tokens: bool = True
    # Padded lengths: each sample goes to the smallest bucket that holds it, so the set covers
    # the sequence axis from min to max. None: powers of two within the recipe's axis range.
    buckets: list[PosInt] | None = None
    pad_id: int | None = None  # None: the tokenizer's [PAD]/<pad> token, else 0

    def input_names(self) -> list[str]:
        return [self.ids] + ([self.mask] if self.mask else [])


class LogMel(_Strict):
    """Log-mel features: Hann-windowed power STFT → triangular mel filters (HTK mel scale)."""

    n_fft: PosInt = 400
    hop: PosInt = 160
    n_mels: PosInt = 64
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log_offset: float = 1e-6  # log(power + offset)
    normalize: Literal["utterance", "none"] = "utterance"  # zero mean, unit std per sample


class AudioPrep(_Spec):
    """WAV/FLAC through soundfile: mono, sample rate, length, then log-mel or the waveform."""

    kind: Literal["audio"]
    input: str
    sample_rate: PosInt
    # A file at another rate is a bad sample unless this is on (then: polyphase resampling).
    resample: bool = False
    features: Literal["log_mel", "waveform"] = "log_mel"
    log_mel: LogMel = Field(default_factory=LogMel)
    # Lengths in the model input's time unit (frames for log_mel, samples for waveform); each
    # clip goes to the bucket nearest its length, padded with zeros or trimmed. One value is a
    # fixed length. None: powers of two within the recipe's axis range.
    buckets: list[PosInt] | None = None

    def input_names(self) -> list[str]:
        return [self.input]


class ArrayPrep(_Spec):
    """A precomputed ``.npy`` array per sample (no batch axis), cast to the input's dtype."""

    kind: Literal["array"]
    input: str

    def input_names(self) -> list[str]:
        return [self.input]


PrepSpec = Annotated[ImagePrep | TextPrep | AudioPrep | ArrayPrep, Field(discriminator="kind")]
