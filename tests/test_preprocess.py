"""Each modality's preprocessing against values worked out by hand, and the sampling rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmedge.data.sampling import choose, zeroed
from mmedge.errors import InputSpecError, RecipeError
from mmedge.preprocess import (
    ArrayPrep,
    AudioPrep,
    ImagePrep,
    LogMel,
    Preprocessor,
    SampleError,
    TextPrep,
)
from mmedge.preprocess.array import ArrayField
from mmedge.preprocess.audio import AudioField
from mmedge.preprocess.buckets import default_buckets, nearest, smallest_holding
from mmedge.preprocess.image import ImageField
from mmedge.preprocess.text import TextField, load_tokenizer
from mmedge.reference import data
from mmedge.reference.raw import TOKENIZER, tokenizer_json

# -- images ------------------------------------------------------------------------------------


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_image_scale_mean_std_and_layouts(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 255, 51, 0  # R, G, B
    path = _png(tmp_path / "a.png", pixels)
    spec = ImagePrep(
        kind="image", input="x", size=(2, 3), mean=[0.5, 0.2, 0.0], std=[0.5, 0.1, 1.0]
    )
    out = ImageField(spec).process(path, None)["x"]
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    # (255/255 - 0.5)/0.5 = 1; (51/255 - 0.2)/0.1 = 0; (0 - 0)/1 = 0
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)
    bgr = ImageField(spec.model_copy(update={"mode": "BGR", "layout": "NHWC"})).process(path, None)
    # BGR puts blue first; mean/std apply to the channels in the order given (after the swap)
    np.testing.assert_allclose(bgr["x"][0, 0], [(0 - 0.5) / 0.5, (0.2 - 0.2) / 0.1, 1.0], atol=1e-6)


def test_image_grey_resize_and_centre_crop(tmp_path: Path) -> None:
    # 8 wide x 4 high, columns numbered 0..7 (x10): shorter side 4 -> 4, crop the middle 4 columns
    pixels = np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1))
    path = _png(tmp_path / "wide.png", pixels)
    spec = ImagePrep(
        kind="image",
        input="x",
        size=(4, 4),
        resize_shorter=4,
        mode="L",
        scale=1.0,
        interpolation="nearest",
    )
    out = ImageField(spec).process(path, None)["x"]
    assert out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0, 0], [20, 30, 40, 50])
    straight = ImageField(spec.model_copy(update={"resize_shorter": None, "size": (2, 4)}))
    assert straight.process(path, None)["x"].shape == (1, 2, 4)
    # An RGB file into a grey model converts (ITU-R 601 luma), not an error
    rgb = _png(tmp_path / "rgb.png", np.full((4, 4, 3), 100, np.uint8))
    np.testing.assert_allclose(ImageField(spec).process(rgb, None)["x"], 100.0)


def test_image_rejects_corrupt_and_truncated_files(tmp_path: Path) -> None:
    spec = ImagePrep(kind="image", input="x", size=(4, 4))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(SampleError, match="cannot read image"):
        ImageField(spec).process(garbage, None)
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SampleError, match="cannot read image"):
        ImageField(spec).process(truncated, None)


# -- text --------------------------------------------------------------------------------------


def test_reference_tokenizer_is_generated_by_code() -> None:
    assert TOKENIZER.read_text() == tokenizer_json()


def test_text_ids_mask_padding_to_bucket_and_truncation() -> None:
    spec = TextPrep(kind="text", tokenizer=TOKENIZER, max_length=8, add_special_tokens=False)
    field = TextField(spec, [4, 8], load_tokenizer(TOKENIZER))
    # seven = 2 + 3*7 = 23, "7" = 24, siete = 25; "the" is the first filler (32); unknown -> 1
    out = field.process("seven 7 the zebra", None)
    np.testing.assert_array_equal(out["input_ids"], [23, 24, 32, 1])
    np.testing.assert_array_equal(out["attention_mask"], [1, 1, 1, 1])
    out = field.process("siete the", None)
    assert out["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["input_ids"], [25, 32, 0, 0])  # bucket 4, [PAD] = 0
    np.testing.assert_array_equal(out["attention_mask"], [1, 1, 0, 0])
    assert field.length("the " * 5) == 5 and field.bucket(5) == 8
    long = field.process("the " * 11, None)
    assert long["input_ids"].shape == (8,) and field.truncated == 1


def test_text_from_a_wordpiece_vocab_with_special_tokens(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s"]))
    spec = TextPrep(kind="text", tokenizer=vocab, max_length=8)
    field = TextField(spec, [8], load_tokenizer(vocab))
    out = field.process("Hello worlds", None)  # BERT-style: lower-cased, word pieces
    np.testing.assert_array_equal(out["input_ids"], [2, 4, 5, 6, 3, 0, 0, 0])


def test_tokenizer_that_does_not_load(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(InputSpecError, match=r"tokenizer .*tokenizer.json does not load"):
        load_tokenizer(bad)
    with pytest.raises(InputSpecError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.json")


# -- audio -------------------------------------------------------------------------------------

_REF_MEL = LogMel(n_fft=data.N_FFT, hop=data.HOP, n_mels=data.N_MELS, fmin=50)


def _audio(buckets: list[int], **changes: object) -> AudioField:
    spec = AudioPrep(kind="audio", input="a", sample_rate=data.SAMPLE_RATE, log_mel=_REF_MEL)
    return AudioField(spec.model_copy(update=changes), buckets)


@pytest.mark.parametrize(
    "fmin, fmax, n_fft, hop, mels", [(50.0, None, 256, 128, 32), (0.0, 7600.0, 400, 160, 64)]
)
def test_log_mel_matches_an_independent_implementation(
    fmin: float, fmax: float | None, n_fft: int, hop: int, mels: int
) -> None:
    """Against transformers' audio_utils (its own mel filters, window and STFT), not a copy."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    from mmedge.preprocess.audio import log_mel, mel_filterbank

    rate = 16000 if fmax else data.SAMPLE_RATE
    wave = np.random.default_rng(1).standard_normal(rate // 2)
    cfg = LogMel(n_fft=n_fft, hop=hop, n_mels=mels, fmin=fmin, fmax=fmax, normalize="none")
    ours = log_mel(wave, cfg, mel_filterbank(cfg, rate))
    filters = mel_filter_bank(n_fft // 2 + 1, mels, fmin, fmax or rate / 2, rate, mel_scale="htk")
    power = spectrogram(
        wave, window_function(n_fft, "hann", periodic=False), n_fft, hop, power=2.0,
        center=False, mel_filters=filters, mel_floor=0.0, dtype=np.float64,
    )  # fmt: skip
    theirs = np.log(power + cfg.log_offset)
    assert ours.shape == theirs.shape == (mels, (wave.size - n_fft) // hop + 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def test_calib_build_features_match_the_reference_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    waves = data.audio_waves(np.array([3]), 64, rng)
    path = tmp_path / "a.wav"
    sf.write(path, waves[0], data.SAMPLE_RATE, subtype="FLOAT")
    out = _audio([64]).process(path, None)["a"]
    assert out.shape == (data.N_MELS, 64)
    np.testing.assert_allclose(out, data.log_mel(waves)[0], atol=1e-4)


def test_a_tone_lands_in_its_mel_band(tmp_path: Path) -> None:
    t = np.arange(data.SAMPLE_RATE) / data.SAMPLE_RATE
    path = tmp_path / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), data.SAMPLE_RATE)
    field = _audio([61], log_mel=_REF_MEL.model_copy(update={"normalize": "none"}))
    feats = field.process(path, None)["a"]
    mels = np.linspace(2595 * np.log10(1 + 50 / 700), 2595 * np.log10(1 + 4000 / 700), 34)
    centres = 700 * (10 ** (mels / 2595) - 1)
    assert abs(centres[1:-1][feats.mean(axis=1).argmax()] - 1000) < 80  # the band nearest 1 kHz


def test_resampling_stereo_and_bucket_fit(tmp_path: Path) -> None:
    t = np.arange(2 * data.SAMPLE_RATE) / (2 * data.SAMPLE_RATE)
    tone = 0.3 * np.sin(2 * np.pi * 700 * t)
    stereo = tmp_path / "stereo16k.wav"
    sf.write(stereo, np.stack([tone, tone], axis=1), 2 * data.SAMPLE_RATE)
    mono = tmp_path / "mono8k.wav"
    sf.write(mono, tone[::2], data.SAMPLE_RATE)
    with pytest.raises(SampleError, match="sample rate 16000 Hz, expected 8000 Hz"):
        _audio([32]).length(stereo)
    field = _audio([32, 48], resample=True)
    # 1 s at 8 kHz = 8000 samples -> (8000 - 256) // 128 + 1 = 61 frames -> nearest bucket 48
    assert field.length(stereo) == 61 and field.bucket(61) == 48
    a = field.process(stereo, None)["a"]
    b = _audio([32, 48]).process(mono, None)["a"]
    assert a.shape == b.shape == (data.N_MELS, 48)  # trimmed to the bucket
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    short = _audio([32, 48]).process(mono, 64)["a"]  # a longer bucket pads with zeros
    assert short.shape == (data.N_MELS, 64)


def test_unreadable_audio(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(SampleError, match="cannot read audio"):
        _audio([32]).length(bad)


# -- arrays and buckets ------------------------------------------------------------------------


def test_npy_arrays_are_cast_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.float64).reshape(2, 3))
    field = ArrayField(ArrayPrep(kind="array", input="x"), "float32", ["batch", 2, "n"])
    out = field.process(path, None)["x"]
    assert out.dtype == np.float32 and field.shape_of(path) == (2, 3)
    bad = ArrayField(ArrayPrep(kind="array", input="x"), "float32", ["batch", 3, "n"])
    with pytest.raises(SampleError, match=r"array shape \[2, 3\] does not fit"):
        bad.process(path, None)


def test_buckets() -> None:
    assert default_buckets(8, 64) == [8, 16, 32, 64]
    assert default_buckets(32, 128) == [32, 64, 128]
    assert default_buckets(5, 5) == [5]
    assert smallest_holding([8, 16, 32], 9) == 16 and smallest_holding([8, 16], 40) == 16
    assert nearest([32, 48, 64], 40) == 48 and nearest([32, 48, 64], 39) == 32


def test_preprocess_section_must_fit_the_inputs() -> None:
    inputs = {"x": (["batch", 1, 4, 4], "float32"), "ids": (["batch", "seq"], "int64")}
    axes = {"batch": (1, 8), "seq": (4, 16)}
    image = ImagePrep(kind="image", input="x", size=(4, 4), mode="L")
    text = TextPrep(kind="text", tokenizer=TOKENIZER, ids="ids", mask=None, max_length=16)
    field = Preprocessor({"img": image, "txt": text}, inputs, axes).fields["txt"]
    assert isinstance(field, TextField) and field.buckets == [4, 8, 16]
    with pytest.raises(RecipeError, match="no preprocess entry fills input"):
        Preprocessor({"img": image}, inputs, axes)
    with pytest.raises(RecipeError, match="per-sample shape \\[3, 4, 4\\]"):
        Preprocessor({"img": image.model_copy(update={"mode": "RGB"}), "txt": text}, inputs, axes)
    with pytest.raises(RecipeError, match="buckets \\[32\\] lie outside axis 'seq'"):
        Preprocessor(
            {"img": image, "txt": text.model_copy(update={"buckets": [8, 32]})}, inputs, axes
        )
    with pytest.raises(RecipeError, match="fills input 'nope'"):
        Preprocessor(
            {"img": image, "txt": text, "z": ArrayPrep(kind="array", input="nope")}, inputs, axes
        )


# -- sampling ----------------------------------------------------------------------------------


def test_stratified_by_label_and_spread_over_buckets() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    groups = [i % 5 for i in range(100)]  # five length buckets, evenly mixed
    chosen = choose(labels, groups, 20, seed=0)
    assert len(chosen) == 20 and len(set(chosen)) == 20 and chosen == sorted(chosen)
    assert Counter(labels[i] for i in chosen) == {"a": 12, "b": 6, "c": 2}
    assert {groups[i] for i in chosen if labels[i] == "a"} == {0, 1, 2, 3, 4}
    # A rare bucket is still represented: round-robin over buckets, not proportional to them
    groups = [0] * 95 + [1] * 5
    chosen = choose([None] * 100, groups, 10, seed=1)
    assert sum(groups[i] == 1 for i in chosen) == 5
    assert choose(["x"] * 3, [0, 0, 0], 10, seed=0) == [0, 1, 2]


def test_zeroed_modalities_keep_one_field() -> None:
    missing = [frozenset({"audio"}) if i < 10 else frozenset() for i in range(100)]
    out = zeroed(missing, {"image": 0.5, "audio": 0.5, "text": 0.5}, fields=3, seed=0)
    assert sum("image" in z for z in out) == 50
    assert sum("audio" in z for z in out[:10]) == 0  # dropped only where the file exists
    assert all(len(z | m) <= 2 for z, m in zip(out, missing, strict=True))
