"""`mmedge run` end to end on the tiny recipe: every target, the report against its JSON,
resume after an interruption, failures and missing targets, per-branch parity, and doctor."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mmedge.cli import app
from mmedge.errors import TargetBuildError
from mmedge.targets import Probe
from tests.conftest import write_recipe
from tests.test_cli import assert_user_error

runner = CliRunner()
PRUNE = {"ratio": 0.5, "round_to": 2, "recover": {"mode": "none"}}
FAST = {"run.latency_rounds": 2, "run.latency_seconds": 0.02}  # the rounds' mechanics, quickly


def recipe_in(directory: Path, changes: dict[str, Any]) -> Path:
    return write_recipe(directory, {**FAST, **changes})


pytest.importorskip("openvino")


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def statuses(directory: Path) -> dict[str, str]:
    steps = json.loads((directory / "run.json").read_text())["steps"]
    return {name: record["status"] for name, record in steps.items()}


def md_table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The rows of the table under ``## heading``, keyed by column header."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """One whole run of the tiny recipe with pruning, every target."""
    root = tmp_path_factory.mktemp("run")
    recipe = recipe_in(root, {"prune": PRUNE})
    out = root / "run"
    result = run("run", recipe, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    return recipe, out, json.loads(result.stdout)


def test_a_whole_run(done: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, report = done
    found = statuses(out)
    assert found["prune"] == "ok"
    for variant in ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"):
        for kind in ("build", "compare", "bench"):
            assert found[f"{kind}:{variant}"] == "ok", (kind, variant)
    assert found["parity:onnxruntime-int8"] == found["parity:openvino-int8"] == "ok"
    # TensorRT: the bundle and its rule check here; engine steps skipped, saying why
    assert found["build:tensorrt-int8"] == found["check:tensorrt-int8"] == "ok"
    assert found["parity:tensorrt-int8"] == "ok"
    assert found["compare:tensorrt-int8"] == found["bench:tensorrt-int8"] == "skipped"
    trt = next(v for v in report["variants"] if v["name"] == "tensorrt-int8")
    assert "TensorRT is not installed here" in trt["missing"]["bench"]
    assert report["baseline"] == "onnxruntime-fp32-unpruned" and found["latency"] == "ok"
    rounds = json.loads((out / "latency.json").read_text())
    assert set(rounds["p50_ms"]) == {
        "onnxruntime-fp32-unpruned", "onnxruntime-fp32", "onnxruntime-int8",
        "openvino-fp32", "openvino-int8",
    }  # fmt: skip
    assert all(len(r) == 2 for r in rounds["p50_ms_per_round"].values())
    # Speed-ups: the report names the baseline latency.json measured against, and each other
    # variant's speed-up is the median over rounds of baseline p50 / its p50 in the same round
    # (interleaved_latency), finite and positive; the report carries those same numbers.
    assert rounds["baseline"] == report["baseline"]
    per_round = rounds["p50_ms_per_round"]
    base = per_round[report["baseline"]]
    assert all(math.isfinite(ms) and ms > 0 for values in per_round.values() for ms in values)
    for name, values in per_round.items():
        if name == report["baseline"]:
            continue
        ratios = [b / v for b, v in zip(base, values, strict=True)]
        assert rounds["speedup"][name] == pytest.approx(statistics.median(ratios)), name
        assert math.isfinite(rounds["speedup"][name]) and rounds["speedup"][name] > 0, name
    for v in report["variants"]:
        assert v["speedup"] == rounds["speedup"].get(v["name"]), v["name"]
    for name in ("report.json", "report.md", "report.html"):
        assert (out / name).is_file()
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 3  # self-contained: nothing fetched, no scripts
    assert not re.search(r"""(src|href)=["']https?://""", html) and "<script" not in html


def test_report_tables_match_the_json(done: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, report = done
    markdown = (out / "report.md").read_text()
    rows = {r["variant"]: r for r in md_table(markdown, "Variants")}
    assert set(rows) == {v["name"] for v in report["variants"]}
    for v in report["variants"]:
        row = rows[v["name"]]
        assert row["MB"] == f"{v['bytes'] / 1e6:.2f}"
        if v["accuracy"] is not None:
            assert row["accuracy"] == f"{v['accuracy']:.2f}%"
        if v["p50_rounds_ms"] is not None:
            # One measurement per row: p50, p99 and samples/s from the same rounds' samples.
            assert row["p50 ms"] == f"{v['p50_rounds_ms']:.3f}"
            assert v["p99_rounds_ms"] >= v["p50_rounds_ms"]
            assert row["p99 ms"] == f"{v['p99_rounds_ms']:.3f}"
            assert row["samples/s"] == f"{v['samples_per_s']:.0f}"
            interval = v["speedup_interval"]
            assert interval["low"] <= v["speedup"] <= interval["high"]
            shown = f"{v['speedup']:.2f}x"
            if v["name"] != report["baseline"]:
                shown += f" [{interval['low']:.2f}, {interval['high']:.2f}]"
            assert row["speed-up"] == shown
        assert (row["Pareto"] == "yes") == (v["name"] in report["pareto"])
    parity = {r["variant"]: r for r in md_table(markdown, "Per-branch parity")}
    for v in report["variants"]:
        for branch, metrics in (v["branches"] or {}).items():
            cosine, sqnr = parity[v["name"]][branch].split(" / ")
            assert float(cosine) == pytest.approx(metrics["cosine"], abs=1e-5)
            assert float(sqnr.removesuffix(" dB")) == pytest.approx(metrics["sqnr_db"], abs=0.05)
        if v["branches"]:
            assert parity[v["name"]]["most affected"] == (v["most_affected"] or "-")
    latency = {r["variant"]: r for r in md_table(markdown, "Latency per branch")}
    for v in report["variants"]:
        for branch, ms in (v["branch_ms"] or {}).items():
            assert latency[v["name"]][branch].startswith(f"{ms:.3f} (")
        if v["branch_ms"]:
            assert latency[v["name"]]["dominant"] == v["dominant_branch"]
    # `mmedge report` re-renders the same report from the directory
    again = run("report", out, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["variants"] == report["variants"]


def test_rerun_skips_unchanged_steps_and_force_redoes_one(
    done: tuple[Path, Path, dict[str, Any]],
) -> None:
    recipe, out, _ = done
    result = run("run", recipe, "-o", out, "--json", "--force", "bench:onnxruntime-int8")
    assert result.exit_code == 0, result.stderr
    found = statuses(out)
    assert found["bench:onnxruntime-int8"] == "ok"
    assert (
        found["prune"] == found["build:openvino-int8"] == found["bench:openvino-int8"] == "cached"
    )
    bad = run("run", recipe, "-o", out, "--force", "bench:nothing")
    assert_user_error(bad, 3, "--force 'bench:nothing' is not a step of this run")


def test_resume_after_an_interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmedge.artifacts

    recipe = recipe_in(tmp_path, {"run.variants": ["onnxruntime-fp32", "onnxruntime-int8"]})
    real = mmedge.artifacts.bench_artifact

    def interrupted(directory: Path, *args: Any, **kwargs: Any) -> Any:
        if directory.name == "onnxruntime-int8":
            raise KeyboardInterrupt
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(mmedge.artifacts, "bench_artifact", interrupted)
    first = run("run", recipe, "-o", tmp_path / "run")
    assert first.exit_code == 130
    found = statuses(tmp_path / "run")
    assert found["bench:onnxruntime-int8"] == "interrupted"
    assert found["build:onnxruntime-int8"] == found["compare:onnxruntime-int8"] == "ok"
    monkeypatch.setattr(mmedge.artifacts, "bench_artifact", real)
    second = run("run", recipe, "-o", tmp_path / "run", "--json")
    assert second.exit_code == 0, second.stderr
    found = statuses(tmp_path / "run")
    assert found["build:onnxruntime-int8"] == found["compare:onnxruntime-int8"] == "cached"
    assert found["bench:onnxruntime-int8"] == "ok"


def test_a_failing_step_is_recorded_and_independent_steps_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmedge.artifacts

    recipe = recipe_in(
        tmp_path, {"run.variants": ["onnxruntime-fp32", "openvino-int8", "onnxruntime-int8"]}
    )
    real = mmedge.artifacts.build_artifact

    def broken(recipe_: Any, target: str, precision: str, *args: Any, **kwargs: Any) -> Any:
        if target == "openvino":
            raise TargetBuildError("NNCF ran out of patience")
        return real(recipe_, target, precision, *args, **kwargs)

    monkeypatch.setattr(mmedge.artifacts, "build_artifact", broken)
    result = run("run", recipe, "-o", tmp_path / "run")
    assert_user_error(result, 6, "1 step(s) failed, first build:openvino-int8")
    found = statuses(tmp_path / "run")
    assert found["build:openvino-int8"] == "failed"
    assert found["compare:openvino-int8"] == found["bench:openvino-int8"] == "blocked"
    assert found["bench:onnxruntime-int8"] == "ok"  # listed after the failure, still ran
    steps = json.loads((tmp_path / "run" / "run.json").read_text())["steps"]
    assert steps["build:openvino-int8"]["error"] == "NNCF ran out of patience"
    assert "NNCF ran out of patience" in (tmp_path / "run" / "report.md").read_text()


def test_missing_target_is_skipped_unless_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmedge.targets.openvino import OpenVinoTarget

    monkeypatch.setattr(
        OpenVinoTarget, "probe", lambda self: Probe(False, hint='pip install "mmedge[openvino]"')
    )
    recipe = recipe_in(tmp_path, {"run.variants": ["onnxruntime-fp32", "openvino-int8"]})
    result = run("run", recipe, "-o", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    found = statuses(tmp_path / "run")
    assert found["build:openvino-int8"] == "skipped" and found["bench:onnxruntime-fp32"] == "ok"
    assert "openvino is not installed" in (tmp_path / "run" / "report.md").read_text()
    strict = run("run", recipe, "-o", tmp_path / "strict", "--strict")
    assert_user_error(strict, 5, "target openvino is not installed (--strict)")


def test_a_run_directory_of_another_recipe_is_refused(
    done: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, out, _ = done
    other = recipe_in(tmp_path, {"name": "other", "run.variants": ["onnxruntime-fp32"]})
    assert_user_error(run("run", other, "-o", out), 9, "holds a run of recipe 'tiny'")
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out, copy)
    taken = run("run", other, "-o", copy, "--force", "all", "--json")
    assert taken.exit_code == 0, taken.stderr
    assert json.loads((copy / "run.json").read_text())["recipe"]["name"] == "other"


def test_parity_points_at_the_degraded_branch(tmp_path: Path) -> None:
    recipe = recipe_in(
        tmp_path,
        {
            "model.factory": "tests.models:outlier_audio",
            "run.variants": ["onnxruntime-fp32", "onnxruntime-int8"],
        },
    )
    result = run("run", recipe, "-o", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    int8 = next(v for v in report["variants"] if v["name"] == "onnxruntime-int8")
    assert int8["most_affected"] == "audio"
    sqnr = {b: m["sqnr_db"] for b, m in int8["branches"].items()}
    assert sqnr["audio"] < 20 < min(sqnr["image"], sqnr["text"])
    assert "most affected branch <b>audio</b>" in (tmp_path / "run" / "report.html").read_text()


def test_doctor() -> None:
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["packages"]["onnxruntime"]["installed"] is True
    assert "CPUExecutionProvider" in data["targets"]["onnxruntime"]["devices"]
    assert data["targets"]["tensorrt"]["version"] is None  # tensorrt-stubs alone is not TensorRT
    assert data["targets"]["tensorrt"]["runs_here"] is False
    assert any("TensorRT is not installed" in a for a in data["advice"])
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if re.search(r"\bavx512_vnni\b", flags):
        assert "AVX-512 VNNI" in data["cpu"]["features"]
    text = run("doctor").stdout
    assert "advice:" in text and "onnxruntime" in text


def test_a_recipe_without_branches_runs_without_parity(tmp_path: Path) -> None:
    recipe = recipe_in(
        tmp_path, {"branches": None, "run.variants": ["onnxruntime-fp32", "onnxruntime-int8"]}
    )
    result = run("run", recipe, "-o", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    found = statuses(tmp_path / "run")
    assert found["parity:onnxruntime-int8"] == "skipped"
    assert found["bench:onnxruntime-int8"] == found["latency"] == "ok"
    assert "declares no branches" in (tmp_path / "run" / "report.md").read_text()


def test_a_corrupt_run_manifest_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    assert_user_error(run("report", out), 10, "is not a readable run manifest")
    recipe = recipe_in(tmp_path, {"run.variants": ["onnxruntime-fp32"]})
    assert_user_error(run("run", recipe, "-o", out), 9, "is not a readable run manifest")
    assert_user_error(run("report", tmp_path), 10, "is not an mmedge run directory")
