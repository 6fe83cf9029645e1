"""`mmedge calib build/inspect` end to end: the reference set rebuilt from raw files, the
manifest and preprocess.json, every warning, and every bad input (exit 4, nothing left)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner, Result

from mmedge.cli import app
from mmedge.data.datasets import ShardDataset, open_calibration
from mmedge.preprocess import Preprocessor
from mmedge.recipe import load_recipe
from mmedge.reference import data
from mmedge.reference.raw import write_raw
from tests.conftest import REFERENCE, REPO, tiny_feeds, write_recipe
from tests.test_cli import assert_user_error

runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 64 samples of the shipped calibration set, as raw files (one shape group)."""
    out = tmp_path_factory.mktemp("raw")
    write_raw(out, data.split("train"), samples=64, shard_size=64, seed=1000)
    return out


@pytest.fixture(scope="module")
def raw_mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 labelled samples over five (seq, frames) shapes."""
    out = tmp_path_factory.mktemp("raw_mixed")
    write_raw(out, data.split("train"), samples=80, shard_size=16, seed=5)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _left_over(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}"))]


def test_rebuilds_the_shipped_calibration_shard(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "calib"
    result = run("calib", "build", REFERENCE, "--from", raw, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)
    calib = manifest["calibration"]
    assert calib["samples"] == 64 and calib["label_key"] == "label"
    assert calib["inputs"]["input_ids"]["dtype"] == "int64"
    assert calib["inputs"]["image"]["shape"] == ["n", 1, 32, 32]
    assert calib["buckets"]["audio"] == {"48": 64}
    assert sum(calib["labels"].values()) == 64
    listing = (out / "sources.csv").read_bytes()
    assert hashlib.sha256(listing).hexdigest() == manifest["source"]["sources_sha256"]
    assert len(listing.decode().strip().splitlines()) == 1 + 64  # header + one row per sample
    assert {"preprocess.json", "tokenizer-text.json", "sources.csv", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    # The shipped shard-000 holds the same 64 samples (seq 16, 48 frames): compare row by row.
    with np.load(REPO / "calibration" / "reference" / "shard-000.npz") as npz:
        shipped = {k: npz[k] for k in npz.files}
    rows = {
        r["id"]: k
        for k, r in enumerate(csv.DictReader((out / "sources.csv").open(encoding="utf-8")))
    }
    order = [rows[f"{i:05d}"] for i in range(64)]
    built: dict[str, list[np.ndarray]] = {}
    for shard in sorted(out.glob("shard-*.npz")):
        with np.load(shard) as npz:
            for k in npz.files:
                built.setdefault(k, []).extend(npz[k])
    for i, j in enumerate(order):
        n = int(shipped["attention_mask"][i].sum())
        np.testing.assert_array_equal(built["input_ids"][j][:n], shipped["input_ids"][i][:n])
        assert int(built["attention_mask"][j].sum()) == n
        # 8-bit pixels (5/255 per step, /0.8) and FP16-rounded shipped values; clipped tails
        assert np.mean(np.abs(built["image"][j] - shipped["image"][i]) < 0.02) > 0.995
        np.testing.assert_allclose(built["audio"][j], shipped["audio"][i], atol=0.02)
    # Every consumer reads it through the one calibration source (labels ignored there)
    recipe = load_recipe(REFERENCE, {"calibration.path": str(out)})
    source = open_calibration(recipe)
    assert source.samples == 64 and next(source.batches(16)).feeds["image"].shape == (16, 1, 32, 32)
    assert ShardDataset(out, recipe, "label").samples == 64
    # preprocess.json applies the same preprocessing without the recipe (the deploy side)
    prep = Preprocessor.load(out / "preprocess.json")
    sample = {
        "image": raw / "image/00003.png",
        "text": raw / "text/00003.txt",
        "audio": raw / "audio/00003.wav",
    }
    feeds = prep(sample)
    j = rows["00003"]
    for name in ("image", "input_ids", "attention_mask", "audio"):
        np.testing.assert_array_equal(feeds[name][0], built[name][j])


def test_quantizing_with_the_rebuilt_set_matches_the_shipped_set(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw(raw, data.split("train"), samples=256, shard_size=64, seed=1000)
    calib = tmp_path / "calib"
    assert run("calib", "build", REFERENCE, "--from", raw, "-o", calib).exit_code == 0
    accuracy = {}
    for name, source in (("shipped", REPO / "calibration" / "reference"), ("rebuilt", calib)):
        out = tmp_path / name
        built = run("quantize", REFERENCE, "--calib", source, "-o", out)
        assert built.exit_code == 0, built.stderr
        compared = run("compare", out, "--json")
        assert compared.exit_code == 0, compared.stderr
        accuracy[name] = json.loads(compared.stdout)["accuracy"]["candidate"]
    # 540 held-out samples: one sample is 0.19 points
    assert abs(accuracy["rebuilt"] - accuracy["shipped"]) <= 0.6, accuracy


def test_manifest_source_stratifies_and_covers_buckets(raw_mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "calib"
    result = run(
        "calib", "build", REFERENCE, "--from", raw_mixed / "manifest.csv", "-o", out,
        "--samples", "30", "--shard-size", "4", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    calib = json.loads(result.stdout)["calibration"]
    assert calib["samples"] == 30
    assert set(calib["buckets"]["audio"]) == {"32", "48", "64", "96", "128"}  # every shape
    all_labels = [r["label"] for r in csv.DictReader((raw_mixed / "labels.csv").open())]
    for label, count in calib["labels"].items():  # proportional, within one sample
        assert abs(count - 30 * all_labels.count(label) / 80) < 1.0 + 1e-9
    assert all(len(np.load(s)["image"]) <= 4 for s in out.glob("shard-*.npz"))
    # Folder and manifest sources give the same set
    folder = tmp_path / "from-folder"
    again = run(
        "calib", "build", REFERENCE, "--from", raw_mixed, "-o", folder,
        "--samples", "30", "--shard-size", "4", "--json",
    )  # fmt: skip
    assert json.loads(again.stdout)["calibration"]["inputs"] == calib["inputs"]
    jsonl = tmp_path / "manifest.jsonl"
    rows = list(csv.DictReader((raw_mixed / "manifest.csv").open()))
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in ("image", "audio"):
        assert rows[0][r].startswith(f"{r}/")
    shutil.copytree(raw_mixed / "image", tmp_path / "image")
    shutil.copytree(raw_mixed / "audio", tmp_path / "audio")
    third = run("calib", "build", REFERENCE, "--from", jsonl, "-o", tmp_path / "j", "--samples", "30",
                "--shard-size", "4", "--json")  # fmt: skip
    assert json.loads(third.stdout)["calibration"]["inputs"] == calib["inputs"]


def test_missing_modality_zeroed_when_the_model_supports_it(
    raw_mixed: Path, tmp_path: Path
) -> None:
    source = _copy(raw_mixed, tmp_path / "raw")
    for wav in sorted((source / "audio").iterdir())[:5]:
        wav.unlink()
    recipe = yaml.safe_load(REFERENCE.read_text())
    recipe["preprocess"]["audio"].update({"missing": "zeros", "drop": 0.25})
    recipe["preprocess"]["text"]["tokenizer"] = str(REPO / "mmedge/reference/tokenizer.json")
    for section in ("model", "calibration", "eval"):
        for key in ("weights", "path"):
            if key in recipe[section]:
                recipe[section][key] = str((REFERENCE.parent / recipe[section][key]).resolve())
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = run("calib", "build", path, "--from", source, "-o", tmp_path / "calib", "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["calibration"]["zeroed"] == {"audio": 20}  # 25% of 80
    assert manifest["calibration"]["missing"] == {"audio": 5}
    zero_rows = 0
    for shard in (tmp_path / "calib").glob("shard-*.npz"):
        audio = np.load(shard)["audio"]
        zero_rows += int((np.abs(audio).reshape(len(audio), -1).max(axis=1) == 0).sum())
    assert zero_rows == 20 + 5  # the dropped ones and the five without a file


def _write_shard(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def test_inspect_warnings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 4
    audio = rng.normal(size=(n, 32, 64)).astype(np.float32)
    audio[0, 0, 0] = np.nan
    ids = rng.integers(0, 128, (n, 16))
    ids[1, 3] = 500  # beyond the 128-token vocabulary
    _write_shard(
        tmp_path / "set" / "shard-0.npz",
        image=np.zeros((n, 1, 32, 32), np.float32),  # constant
        input_ids=ids.astype(np.float32),  # float token ids
        attention_mask=np.ones((n, 16), np.int64),
        audio=audio,
    )
    result = run("calib", "inspect", tmp_path / "set", "--recipe", REFERENCE, "--json")
    assert result.exit_code == 0, result.stderr
    found = {(w["code"], w["input"]) for w in json.loads(result.stdout)["warnings"]}
    assert {
        ("nonfinite", "audio"),
        ("constant", "image"),
        ("constant", "attention_mask"),
        ("dtype", "input_ids"),
        ("token_range", "input_ids"),
        ("thin_bucket", None),
        ("axis_coverage", None),
    } <= found
    text = run("calib", "inspect", tmp_path / "set", "--recipe", REFERENCE).stdout
    assert "fewer than 8 samples at size(s) 16: 4" in text and "500" in text
    almost = 1.0 + 1e-9 * rng.normal(size=(2, 3, 32, 32))  # near-constant, not constant
    _write_shard(tmp_path / "odd" / "s.npz", image=almost.astype(np.float64), extra=np.ones((2, 4)))
    odd = json.loads(
        run("calib", "inspect", tmp_path / "odd", "--recipe", REFERENCE, "--json").stdout
    )
    found = {(w["code"], w["input"]): w["message"] for w in odd["warnings"]}
    assert {("shape", "image"), ("missing_input", "audio"), ("unknown_input", "extra")} <= set(
        found
    )
    assert "near-constant" in found[("constant", "image")]
    assert "constant (every value" in found[("constant", "extra")]
    strict = run("calib", "inspect", tmp_path / "set", "--strict")
    assert_user_error(strict, 4, "warning(s)")


def test_inspect_a_clean_set_and_without_recipe(tmp_path: Path) -> None:
    result = run("calib", "inspect", REPO / "calibration" / "reference", "--json")
    data_ = json.loads(result.stdout)
    assert data_["samples"] == 256 and data_["inputs"]["audio"]["sizes"][1] == {
        "48": 64, "64": 64, "96": 64, "128": 64,
    }  # fmt: skip
    assert data_["warnings"] == []
    assert_user_error(run("calib", "inspect", tmp_path / "nothing"), 4, "not found")


# -- bad input ----------------------------------------------------------------------------------


def _assert_nothing_written(out: Path) -> None:
    assert _left_over(out.parent, out.name) == []


def test_bad_files_are_collected_and_summarized(raw_mixed: Path, tmp_path: Path) -> None:
    source = _copy(raw_mixed, tmp_path / "raw")
    (source / "image" / "00000.png").write_bytes(b"garbage")  # corrupt image
    good = (source / "image" / "00001.png").read_bytes()
    (source / "image" / "00001.png").write_bytes(good[:60])  # truncated image
    (source / "audio" / "00002.wav").write_bytes(b"RIFF....WAVE")  # unreadable audio
    wave, rate = sf.read(source / "audio" / "00003.wav")
    sf.write(source / "audio" / "00003.wav", np.repeat(wave, 2), 2 * rate)  # another rate
    (source / "audio" / "00004.wav").unlink()  # a sample without audio
    (source / "text" / "00005.txt").write_text("   \n")  # empty text
    for k in range(6, 20):
        (source / "image" / f"{k:05d}.png").write_bytes(b"bad")
    out = tmp_path / "calib"
    result = run("calib", "build", REFERENCE, "--from", source, "-o", out)
    assert_user_error(
        result,
        4,
        "20 problem(s) among 80 samples; no calibration set was written",
        "00002: audio: cannot read audio",
        "00003: audio: sample rate 16000 Hz, expected 8000 Hz",
        "00004: no audio (the model needs it",
        "00005: text: text is empty",
        "00000: image: cannot read image",
        "00001: image: cannot read image",  # truncated: found when decoded
        "… and 10 more",
        "--skip-bad",
    )
    _assert_nothing_written(out)
    skipped = run("calib", "build", REFERENCE, "--from", source, "-o", out, "--skip-bad", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    manifest = json.loads(skipped.stdout)
    assert manifest["calibration"]["samples"] == 60
    assert manifest["source"]["skipped_count"] == 20
    assert any("00000: image: cannot read image" in s for s in manifest["source"]["skipped"])


@pytest.mark.parametrize(
    ("change", "code", "fragment"),
    [
        ("empty", 4, "holds no samples"),
        ("no_folder", 4, "has no 'audio/' folder"),
        ("tokenizer", 4, "does not load"),
        ("no_preprocess", 3, "has no 'preprocess' section"),
        ("bad_input", 3, "preprocess.image fills input 'pixels'"),
        ("not_a_source", 4, "expected a folder (one sub-folder per field) or a .csv/.jsonl"),
        ("manifest_column", 4, "has no column for field(s) audio"),
    ],
)
def test_bad_sources_and_recipes(
    raw_mixed: Path, tmp_path: Path, change: str, code: int, fragment: str
) -> None:
    recipe = yaml.safe_load(REFERENCE.read_text())
    recipe["preprocess"]["text"]["tokenizer"] = str(REPO / "mmedge/reference/tokenizer.json")
    recipe["model"]["weights"] = str((REFERENCE.parent / recipe["model"]["weights"]).resolve())
    recipe["calibration"]["path"] = str(REPO / "calibration/reference")
    recipe["eval"]["path"] = str(REPO / "calibration/reference-eval")
    source: Path = raw_mixed
    if change == "empty":
        source = tmp_path / "empty"
        for sub in ("image", "text", "audio"):
            (source / sub).mkdir(parents=True)
    elif change == "no_folder":
        source = tmp_path / "raw"
        shutil.copytree(raw_mixed / "image", source / "image")
        shutil.copytree(raw_mixed / "text", source / "text")
    elif change == "tokenizer":
        broken = tmp_path / "tokenizer.json"
        broken.write_text('{"model": {"type": "Nope"}}')
        recipe["preprocess"]["text"]["tokenizer"] = str(broken)
    elif change == "no_preprocess":
        del recipe["preprocess"]
    elif change == "bad_input":
        recipe["preprocess"]["image"]["input"] = "pixels"
    elif change == "not_a_source":
        source = raw_mixed / "labels.csv"
        source = tmp_path / "data.txt"
        source.write_text("x")
    elif change == "manifest_column":
        source = tmp_path / "m.csv"
        source.write_text("id,image,text\n1,image/00000.png,the\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "calib"
    assert_user_error(run("calib", "build", path, "--from", source, "-o", out), code, fragment)
    _assert_nothing_written(out)


def test_output_that_is_not_a_calibration_set_is_refused(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "calib"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(
        run("calib", "build", REFERENCE, "--from", raw, "-o", out), 9, "not an mmedge artifact"
    )
    assert (out / "notes.txt").read_text() == "mine"


# -- hostile files: each a per-file problem naming the file, or a clear error; never a traceback


def _declare_size(png: Path, width: int, height: int) -> None:
    """Rewrite a PNG's IHDR to declare another size (CRC fixed, pixels unchanged): a
    decompression bomb's header in a few hundred bytes, refused before any decoding."""
    data = bytearray(png.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    png.write_bytes(bytes(data))


def test_decompression_bomb_images_are_problems_naming_file_and_size(
    raw_mixed: Path, tmp_path: Path
) -> None:
    from PIL import Image

    source = _copy(raw_mixed, tmp_path / "raw")
    bomb, big = source / "image" / "00000.png", source / "image" / "00001.png"
    _declare_size(bomb, 30000, 30000)  # above twice the limit: Pillow raises
    _declare_size(big, 10000, 10000)  # between the limit and twice it: Pillow only warns
    out = tmp_path / "calib"
    limit = f"above the limit of {Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS"
    assert_user_error(
        run("calib", "build", REFERENCE, "--from", source, "-o", out),
        4,
        "2 problem(s) among 80 samples; no calibration set was written",
        f"00000: image: image {bomb} is too large to decode safely: 900000000 pixels, {limit}",
        f"00001: image: image {big} is too large to decode safely: 100000000 pixels, {limit}",
    )
    _assert_nothing_written(out)


def _wav_chunks(path: Path) -> tuple[bytes, int]:
    """A 16-bit mono WAV's bytes and where its samples start (after the 'data' chunk header)."""
    data = path.read_bytes()
    return data, data.index(b"data") + 8


def test_truncated_and_empty_wavs_are_problems_naming_the_file(
    raw_mixed: Path, tmp_path: Path
) -> None:
    source = _copy(raw_mixed, tmp_path / "raw")
    audio = source / "audio"
    truncated, header_only, no_data = audio / "00000.wav", audio / "00001.wav", audio / "00002.wav"
    frames = sf.info(truncated).frames
    data, start = _wav_chunks(truncated)
    truncated.write_bytes(data[: start + 2 * (frames // 2)])  # half the samples, header intact
    sf.write(header_only, np.zeros(0, np.float32), 8000, subtype="PCM_16")  # 0 frames
    data, start = _wav_chunks(no_data)
    fmt_only = data[: start - 8]  # RIFF, WAVE and the format chunk; the data chunk cut off
    no_data.write_bytes(b"RIFF" + struct.pack("<I", len(fmt_only) - 8) + fmt_only[8:])
    # libsndfile alone reads the first as a shorter clip and the second as an empty one
    assert sf.info(truncated).frames == frames // 2 and sf.info(header_only).frames == 0
    out = tmp_path / "calib"
    assert_user_error(
        run("calib", "build", REFERENCE, "--from", source, "-o", out),
        4,
        "3 problem(s) among 80 samples; no calibration set was written",
        f"00000: audio: {truncated} is truncated: header declares {frames} frames, "
        f"file holds {frames // 2}",
        f"00001: audio: {header_only} holds no audio samples (its header declares 0 frames)",
        f"00002: audio: {no_data} holds no audio samples: its header has no 'data' chunk",
    )
    _assert_nothing_written(out)


def test_symlink_loops_in_a_folder_are_problems_naming_the_path(
    raw_mixed: Path, tmp_path: Path
) -> None:
    source = _copy(raw_mixed, tmp_path / "raw")
    image = source / "image"
    (image / "00000.png").unlink()
    (image / "00000.png").symlink_to("00100.png")  # 00000 -> 00100 -> 00000
    (image / "00100.png").symlink_to("00000.png")
    (image / "up").symlink_to("..", target_is_directory=True)  # a folder linking to its parent
    (image / "00101.png").symlink_to("nowhere.png")  # dangling: was skipped without a word
    out = tmp_path / "calib"
    assert_user_error(
        run("calib", "build", REFERENCE, "--from", source, "-o", out),
        4,
        "5 problem(s)",
        f"{image / '00000.png'}: a symlink loop",
        f"{image / '00100.png'}: a symlink loop",
        f"{image / 'up'}: a symlink loop (it links to {source.resolve()}, a folder that holds it)",
        f"{image / '00101.png'}: a broken symlink (its target 'nowhere.png' does not exist)",
        "00000: no image (the model needs it",  # its one image is the loop
        "--skip-bad",
    )
    _assert_nothing_written(out)
    skipped = run("calib", "build", REFERENCE, "--from", source, "-o", out, "--skip-bad", "--json")
    assert skipped.exit_code == 0, skipped.stderr
    manifest = json.loads(skipped.stdout)
    assert manifest["calibration"]["samples"] == 79
    assert manifest["source"]["skipped_count"] == 5


@pytest.mark.parametrize("where", ["source", "field", "labels"])
def test_unfollowable_source_folder_or_labels_is_an_error(
    raw_mixed: Path, tmp_path: Path, where: str
) -> None:
    source = tmp_path / "raw"
    if where == "source":
        source.symlink_to(source.name)  # links to itself
        looped, expected = source, f"calibration source {source} is a symlink loop"
    else:
        for field in ("image", "text", "audio"):
            shutil.copytree(raw_mixed / field, source / field)
        looped = source / ("audio" if where == "field" else "labels.csv")
        if where == "field":
            shutil.rmtree(looped)  # is_dir() said False: the field was taken as absent
        looped.symlink_to(looped.name)
        expected = (
            "'audio/' is a symlink loop (following it never reaches a file or folder); "
            "expected the folder of audio files"
            if where == "field"
            else f"{looped} is a symlink loop (following it never reaches a file or folder)"
        )
    out = tmp_path / "calib"
    assert_user_error(run("calib", "build", REFERENCE, "--from", source, "-o", out), 4, expected)
    _assert_nothing_written(out)


def test_empty_and_garbage_files_of_every_kind_name_the_file(
    raw_mixed: Path, tmp_path: Path
) -> None:
    source = _copy(raw_mixed, tmp_path / "raw")
    empty_png, garbage_wav = source / "image" / "00000.png", source / "audio" / "00001.wav"
    empty_wav, bad_text = source / "audio" / "00002.wav", source / "text" / "00003.txt"
    empty_png.write_bytes(b"")
    garbage_wav.write_bytes(b"RIFF\x10\x00\x00\x00WAVEgarbage!")
    empty_wav.write_bytes(b"")
    bad_text.write_bytes(b"\xff\xfe not UTF-8")
    out = tmp_path / "calib"
    assert_user_error(
        run("calib", "build", REFERENCE, "--from", source, "-o", out),
        4,
        "4 problem(s) among 80 samples",
        f"00000: image: cannot read image: cannot identify image file '{empty_png}'",
        f"00001: audio: cannot read audio: Error opening '{garbage_wav}'",
        f"00002: audio: cannot read audio: Error opening '{empty_wav}'",
        f"00003: text: cannot read text: {bad_text}: 'utf-8' codec can't decode",
    )
    _assert_nothing_written(out)


def test_empty_and_truncated_npy_arrays_name_the_file(tmp_path: Path) -> None:
    """Array fields (not in the reference recipe): a zero-byte .npy raised numpy's EOFError."""
    preprocess = {
        name: {"kind": "array", "input": name}
        for name in ("image", "input_ids", "attention_mask", "audio")
    }
    recipe = write_recipe(tmp_path / "recipe", {"preprocess": preprocess})
    source = tmp_path / "raw"
    feeds = tiny_feeds(3, 8, 16)
    for name, batch in feeds.items():
        (source / name).mkdir(parents=True)
        for k, array in enumerate(batch):
            np.save(source / name / f"{k}.npy", array)
    empty, cut = source / "image" / "0.npy", source / "audio" / "1.npy"
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:-64])  # the header intact, the data short
    out = tmp_path / "calib"
    assert_user_error(
        run("calib", "build", recipe, "--from", source, "-o", out),
        4,
        "2 problem(s) among 3 samples",
        f"0: image: cannot read array: {empty}: No data left in file",
        f"1: audio: cannot read array: {cut}: ",
    )
    _assert_nothing_written(out)
