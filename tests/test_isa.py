"""INT8 types for the CPU an artifact runs on: profiles from simulated feature sets, the types
each profile gets, what the manifest records, and the warning when the CPU differs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from mmedge import hardware
from mmedge.artifacts import build_artifact, compare_artifact
from mmedge.errors import RecipeError
from mmedge.hardware import PROFILES, classify
from mmedge.quantize import isa
from mmedge.quantize.isa import kernel_mismatch, nncf_overflow_fix, ort_types
from mmedge.recipe import load_recipe
from tests.conftest import write_recipe

X86_BASE = {"sse4_2", "avx", "avx2", "fma"}


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        (X86_BASE, "x86_64", "x86-avx2"),
        (X86_BASE | {"avx512f", "avx512bw"}, "x86_64", "x86-avx512"),
        (X86_BASE | {"avx512f", "avx512_vnni"}, "x86_64", "x86-vnni"),
        (X86_BASE | {"avx_vnni"}, "AMD64", "x86-vnni"),  # Alder Lake; Windows spells it AMD64
        (X86_BASE | {"avx512f", "avx512_vnni", "amx_int8"}, "x86_64", "x86-amx"),
        ({"fp", "asimd"}, "aarch64", "arm-neon"),
        ({"fp", "asimd", "asimddp"}, "aarch64", "arm-dotprod"),
        ({"fp", "asimd", "asimddp", "i8mm"}, "arm64", "arm-i8mm"),
    ],
)
def test_profiles_from_simulated_feature_sets(flags: set[str], machine: str, expected: str) -> None:
    profile = classify(frozenset(flags), machine)
    assert profile is not None and profile.name == expected


def test_unreadable_features_are_unknown_not_absent() -> None:
    assert classify(None, "x86_64") is None
    assert classify(frozenset({"sse2"}), "x86_64") is None  # no AVX2: no profile claims it
    assert classify(frozenset({"v"}), "riscv64") is None


def _simulate(monkeypatch: pytest.MonkeyPatch, flags: set[str] | None, machine: str) -> None:
    monkeypatch.setattr(isa, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    monkeypatch.setattr(isa.platform, "machine", lambda: machine)


@pytest.mark.parametrize(
    ("flags", "machine", "types"),
    [
        # Without VNNI, u8 x s8 saturates in VPMADDUBSW: U8U8 cannot.
        (X86_BASE, "x86_64", ("uint8", "uint8", "x86-avx2")),
        (X86_BASE | {"avx512f"}, "x86_64", ("uint8", "uint8", "x86-avx512")),
        (X86_BASE | {"avx512_vnni"}, "x86_64", ("uint8", "int8", "x86-vnni")),
        ({"asimd", "asimddp"}, "aarch64", ("int8", "int8", "arm-dotprod")),
        (None, "x86_64", ("uint8", "uint8", "unknown")),
    ],
)
def test_auto_types_follow_the_machine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: set[str] | None,
    machine: str,
    types: tuple[str, str, str],
) -> None:
    _simulate(monkeypatch, flags, machine)
    chosen = ort_types(load_recipe(write_recipe(tmp_path)).quantization)
    assert (chosen.activation_type, chosen.weight_type, chosen.profile) == types
    assert chosen.detected and chosen.reason


def test_explicit_profile_and_types_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _simulate(monkeypatch, X86_BASE | {"avx512_vnni"}, "x86_64")
    recipe = load_recipe(write_recipe(tmp_path, {"quantization.isa": "x86-avx2"}))
    chosen = ort_types(recipe.quantization)
    assert (chosen.profile, chosen.detected, chosen.weight_type) == ("x86-avx2", False, "uint8")
    recipe = load_recipe(
        write_recipe(tmp_path, {"quantization.isa": "x86-avx2", "quantization.reduce_range": True})
    )
    chosen = ort_types(recipe.quantization)
    assert chosen.reduce_range and "set in the recipe: reduce_range=True" in chosen.reason


def test_nncf_overflow_fix_follows_the_profile(tmp_path: Path) -> None:
    for profile, expected in (
        ("x86-avx2", "enable"),
        ("x86-vnni", "disable"),
        ("arm-i8mm", "disable"),
    ):
        recipe = load_recipe(write_recipe(tmp_path, {"quantization.isa": profile}))
        assert nncf_overflow_fix(recipe)[0] == expected
    pinned = {"quantization.isa": "x86-avx2", "targets.openvino.nncf.overflow_fix": "first_layer"}
    assert nncf_overflow_fix(load_recipe(write_recipe(tmp_path, pinned)))[0] == "first_layer"


def test_unknown_profile_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        RecipeError, match=r"quantization\.isa: unknown ISA profile 'x86-avx3'.*x86-avx2"
    ):
        load_recipe(write_recipe(tmp_path, {"quantization.isa": "x86-avx3"}))


def test_artifact_records_and_uses_the_profile_types(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"quantization.isa": "x86-avx2"}))
    manifest = build_artifact(recipe, "onnxruntime", "int8", tmp_path / "int8")
    types = manifest["steps"]["build"]["int8_types"]
    assert types["profile"] == "x86-avx2" and types["weight_type"] == "uint8"
    assert "saturate" in types["reason"]
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    types8 = {i.data_type for i in model.graph.initializer if i.name.endswith("_quantized")}
    assert TensorProto.UINT8 in types8 and TensorProto.INT8 not in types8  # biases are INT32


def test_kernel_mismatch_warning() -> None:
    avx2, vnni, amx = PROFILES["x86-avx2"], PROFILES["x86-vnni"], PROFILES["x86-amx"]
    warning = kernel_mismatch("x86-vnni", avx2)
    assert (
        warning and "quantized for x86-vnni" in warning and "quantization.isa: x86-avx2" in warning
    )
    assert kernel_mismatch("x86-vnni", amx) is None  # both accumulate in 32 bits
    assert kernel_mismatch("x86-avx2", PROFILES["x86-avx512"]) is None  # both VPMADDUBSW
    assert "could not be read" in (kernel_mismatch("x86-vnni", None) or "")
    assert kernel_mismatch("unknown", vnni) is None


def test_compare_and_bench_warn_on_another_cpu_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmedge.artifacts import bench_artifact

    recipe = load_recipe(write_recipe(tmp_path, {"quantization.isa": "x86-vnni"}))
    build_artifact(recipe, "onnxruntime", "int8", tmp_path / "int8")
    monkeypatch.setattr(hardware, "host_profile", lambda: PROFILES["x86-avx2"])
    report = compare_artifact(tmp_path / "int8")
    assert report.warnings and "this CPU is x86-avx2" in report.warnings[0]
    assert bench_artifact(tmp_path / "int8", {"iterations": 2}).warnings == report.warnings
    monkeypatch.setattr(hardware, "host_profile", lambda: PROFILES["x86-amx"])
    assert compare_artifact(tmp_path / "int8").warnings == []


def test_features_unknown_when_archspec_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    from archspec.cpu import detect, microarchitecture

    generic = microarchitecture.generic_microarchitecture("aarch64")
    monkeypatch.setattr(detect, "detected_info", lambda: generic)
    monkeypatch.setattr("archspec.cpu.host", lambda: generic)
    hardware.cpu_flags.cache_clear()
    try:
        assert hardware.cpu_flags() is None
        assert hardware.has_int8_dot_product() is None
        assert hardware.cpu_summary()["isa_profile"] == "unknown"
    finally:
        hardware.cpu_flags.cache_clear()


def test_cli_isa_and_auto_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmedge.cli import app

    recipe = write_recipe(tmp_path)
    runner = CliRunner()
    bad = runner.invoke(
        app, ["quantize", str(recipe), "--isa", "x86-sse", "-o", str(tmp_path / "a")]
    )
    assert bad.exit_code == 3 and "x86-avx2" in bad.stderr and "Traceback" not in bad.stderr
    auto = runner.invoke(app, ["quantize", str(recipe), "--auto", "-o", str(tmp_path / "b")])
    assert auto.exit_code == 3 and "quantization.accuracy" in auto.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
