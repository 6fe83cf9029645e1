"""`mmedge sweep` on real Ray clusters: a two-node cluster joined with --address (a worker
killed mid-sweep), a local one started by the command, Optuna interrupted and resumed, a failing
trial, and every input error before a cluster starts. The mechanics (fronts, the store, the
space) are tested on their own below."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mmedge.cli import app
from tests.conftest import REFERENCE, REPO, write_recipe

HAS_RAY = all(importlib.util.find_spec(m) is not None for m in ("ray", "optuna"))
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="needs Ray and Optuna (mmedge[sweep])")
runner = CliRunner()

# The reference model without pruning or the INT8 search, benched briefly: trials of seconds.
QUICK = ["--set", "prune=null", "--set", "quantization.accuracy=null",
         "--set", "bench.iterations=30", "--set", "bench.warmup=5"]  # fmt: skip
GRID6 = ["--grid", "run.variants=onnxruntime-fp32,onnxruntime-int8,openvino-int8",
         "--grid", "quantization.per_channel=true,false"]  # fmt: skip
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmedge", "sweep", *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def read(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "sweep.json").read_text())
    return data


def figures(data: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {
        (p["trial"], p["variant"]): (p["accuracy"], p["mb"], p["p50_ms"])
        for t in data["trials"]
        for p in t["points"]
    }


def _ray_processes() -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if line.startswith("ray::") or "/ray/core/src/ray/" in line:
            found.add(proc.pid)
    return found


class Killer(threading.Thread):
    """SIGKILLs the first worker seen running a build for a second: a worker lost mid-task."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        seen: dict[int, float] = {}
        while not self.stop.is_set() and self.killed is None:
            for proc in psutil.process_iter(["cmdline"]):
                if " ".join(proc.info["cmdline"] or []).startswith("ray::mmedge-build"):
                    first = seen.setdefault(proc.pid, time.monotonic())
                    if time.monotonic() - first > 1.0:
                        proc.kill()
                        self.killed = proc.pid
                        return
            time.sleep(0.1)


@dataclass
class ClusterSweep:
    directory: Path
    result: subprocess.CompletedProcess[str]
    killed: int | None
    leftovers: list[Path]
    first: dict[str, Any]


@pytest.fixture(scope="module")
def cluster_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSweep]:
    """The 6-trial grid on a two-node cluster (--address), one build's worker killed."""
    from tests.raycluster import two_node_cluster

    if not HAS_RAY:
        pytest.skip("needs Ray and Optuna (mmedge[sweep])")
    root = tmp_path_factory.mktemp("sweep")
    directory = root / "sweep"
    with two_node_cluster(root / "ray-logs") as address:
        killer = Killer()
        killer.start()
        result = sweep(str(REFERENCE), *QUICK, *GRID6, "--address", address, "-o", str(directory))
        killer.stop.set()
        killer.join()
    leftovers = sorted((directory / "cache" / "tmp").glob("work-*"))
    yield ClusterSweep(directory, result, killer.killed, leftovers, read(directory))


@needs_ray
def test_grid_on_two_nodes_survives_a_killed_worker(cluster_sweep: ClusterSweep) -> None:
    data, result = cluster_sweep.first, cluster_sweep.result
    assert result.returncode == 0, result.stderr[-3000:]
    # The worker was killed inside a build (its scratch directory is left behind), and Ray's
    # retry finished the stage: every trial is complete.
    assert cluster_sweep.killed is not None
    assert cluster_sweep.leftovers, "the worker was not killed mid-stage"
    assert len(data["trials"]) == 6
    assert {t["state"] for t in data["trials"]} == {"ok"}
    assert len(data["cluster"]["nodes"]) == 2
    nodes = {s["node"] for t in data["trials"] for n, s in t["stages"].items() if "bench" not in n}
    assert len(nodes) == 2, nodes  # the tasks ran on both nodes
    # The FP32 variant ignores quantization settings: built and compared once for two trials.
    fp32 = [t for t in data["trials"] if "onnxruntime-fp32" in t["label"]]
    assert (
        fp32[0]["stages"]["build:onnxruntime-fp32"]["key"]
        == fp32[1]["stages"]["build:onnxruntime-fp32"]["key"]
    )
    # 6 trials x 3 stages: 5 distinct builds, and no more than 5 compares and benches (fewer
    # when two builds give the same artifact: OpenVINO ignores per_channel).
    counts = data["counts"]
    assert counts["run"] + counts["shared"] + counts["cached"] == 18
    assert 13 <= counts["run"] <= 15 and counts["failed"] == 0
    for point in (p for t in data["trials"] for p in t["points"]):
        assert point["status"] == "ok" and 80 < point["accuracy"] < 100
        assert point["p50_ms"] > 0 and 0.1 < point["mb"] < 2
        assert (Path(point["artifact"]) / "manifest.json").is_file()
    front = data["fronts"]["local"]
    assert front and all(p in [q for t in data["trials"] for q in t["points"]] for p in front)
    best = max(p["accuracy"] for t in data["trials"] for p in t["points"])
    assert max(p["accuracy"] for p in front) == best  # the most accurate point is on the front
    html = (cluster_sweep.directory / "sweep.html").read_text()
    assert html.count("<svg") == 2 and "Front on local" in html
    assert "| trial | variant |" in (cluster_sweep.directory / "sweep.md").read_text()
    # Cached files are read-only: a write in place into a trial would corrupt every trial.
    model = next((cluster_sweep.directory / "cache").glob("*/onnxruntime-int8/*.onnx"))
    assert not model.stat().st_mode & stat.S_IWUSR


@needs_ray
def test_resumed_sweep_rebuilds_nothing(cluster_sweep: ClusterSweep) -> None:
    """Again, on a local cluster this time: every stage comes from the cache, same figures."""
    directory = cluster_sweep.directory
    result = sweep(str(REFERENCE), *QUICK, *GRID6, "--workers", "1", "-o", str(directory))
    assert result.returncode == 0, result.stderr[-3000:]
    data = read(directory)
    assert data["counts"] == {"run": 0, "cached": 18, "shared": 0, "failed": 0}
    assert figures(data) == figures(cluster_sweep.first)
    assert data["resumed_from"] == cluster_sweep.first["started"]
    assert not list((directory / "cache" / "tmp").glob("work-*"))  # the killed one's, cleaned


@needs_ray
def test_front_recipes_rebuild_the_same_figures(
    cluster_sweep: ClusterSweep, tmp_path: Path
) -> None:
    from mmedge.artifacts import build_artifact, compare_artifact
    from mmedge.recipe import load_recipe
    from mmedge.rundir import read_manifest

    data = read(cluster_sweep.directory)
    written = data["front_recipes"]["local"]
    assert len(written) == len(data["fronts"]["local"])
    for point, path in zip(data["fronts"]["local"], written, strict=True):
        recipe = load_recipe(Path(path))
        assert recipe.run.variants == [point["variant"]]
        assert recipe.quantization.isa != "auto"  # pinned to the types measured
        target, precision = point["variant"].split("-")
        out = tmp_path / point["variant"] / point["trial"]
        manifest = build_artifact(recipe, target, precision, out)
        swept = read_manifest(Path(point["artifact"]))
        assert _contents(manifest) == _contents(swept)
        report = compare_artifact(out, parity=False)
        assert report.accuracy is not None
        assert round(report.accuracy["candidate"], 6) == round(point["accuracy"], 6)


def _contents(manifest: dict[str, Any]) -> dict[str, str]:
    """An artifact's files by sha256, but an OpenVINO IR's XML: OpenVINO names the nodes it
    creates from a process-wide counter (Constant_6812726), so the same model's XML differs
    with what the process built before; its weights (.bin) do not."""
    files = manifest["artifact"].get("files") or [manifest["artifact"]]
    return {f["path"]: f["sha256"] for f in files if not f["path"].endswith(".xml")}


def _tiny(tmp_path: Path, changes: dict[str, Any] | None = None) -> Path:
    return write_recipe(tmp_path / "tiny", {"model.import_path": [str(REPO)], **(changes or {})})


@needs_ray
def test_optuna_interrupted_then_resumed(tmp_path: Path) -> None:
    """A local cluster started by the command; Ctrl-C leaves no Ray process and a sweep.json
    that says so; the resumed search goes on from the trials it had."""
    recipe = _tiny(tmp_path, {"quantization.method": "percentile"})
    out = tmp_path / "sweep"
    args = [str(recipe), "--search", "optuna", "--trials", "8", "--workers", "2", "--seed", "3",
            "--grid", "quantization.percentile=99.0..99.999",
            "--grid", "run.variants=onnxruntime-fp32,onnxruntime-int8", "-o", str(out)]  # fmt: skip
    before = _ray_processes()
    proc = subprocess.Popen([sys.executable, "-m", "mmedge", "sweep", *args], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if len(read(out)["trials"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    interrupted = read(out)
    assert interrupted["status"] == "interrupted"
    done = len(interrupted["trials"])
    assert 2 <= done < 8
    deadline = time.monotonic() + 30
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes() - before, "Ray processes outlived the interrupted sweep"

    result = sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    data = read(out)
    # 8 trials; one the sampler asked again is recorded (as a repeat) but not counted.
    assert data["status"] == "done"
    assert len({t["id"] for t in data["trials"]}) == 8
    assert sum(1 for t in data["trials"] if not t.get("repeat")) == 8
    assert [t["number"] for t in data["trials"]] == list(range(len(data["trials"])))

    # The trials finished before Ctrl-C are kept as they were (and told to the sampler again).
    def kept(trials: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(t["id"], t["points"]) for t in sorted(trials, key=lambda t: t["number"])]

    assert kept(data["trials"][:done]) == kept(interrupted["trials"])
    for trial in data["trials"]:
        assert 99.0 <= trial["overrides"]["quantization.percentile"] <= 99.999
        assert trial["overrides"]["run.variants"] in (["onnxruntime-fp32"], ["onnxruntime-int8"])
    assert data["fronts"]["local"]


@needs_ray
def test_failing_and_stopped_trials_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """The space in the recipe's own sweep section: one value cannot load its model, and the
    INT8 variant is over the size constraint (stopped after its build: never compared; on a
    model this small, quantization's scales outweigh the weights it shrinks)."""
    recipe = _tiny(tmp_path, {
        "sweep": {"grid": {"model.factory": ["tests.models:tiny_fusion",
                                             "tests.models:failing_factory"],
                           "run.variants": ["onnxruntime-fp32", "onnxruntime-int8"]},
                  "objectives": ["accuracy", "size"],
                  "constraints": {"max_mb": 0.05}},
    })  # fmt: skip
    result = sweep(str(recipe), "--workers", "1", "-o", str(tmp_path / "out"))
    assert result.returncode == 18, result.stderr[-3000:]
    assert "2 of 4 trials failed" in result.stderr
    data = read(tmp_path / "out")
    states = {t["label"]: t for t in data["trials"]}
    ok = states["model.factory=tests.models:tiny_fusion run.variants=onnxruntime-fp32"]
    stopped = states["model.factory=tests.models:tiny_fusion run.variants=onnxruntime-int8"]
    assert ok["state"] == "ok" and stopped["state"] == "stopped"
    assert "max_mb 0.05" in stopped["points"][0]["reason"]
    assert set(stopped["stages"]) == {"build:onnxruntime-int8"}  # stopped before its compare
    for trial in data["trials"]:
        if "failing_factory" in trial["label"]:
            point = trial["points"][0]
            assert trial["state"] == "failed" and point["exit_code"] == 8
            assert point["step"].startswith("build:") and "factory" in point["error"]
    assert [p["trial"] for p in data["fronts"]["local"]] == [ok["id"]]
    assert not any(n.startswith("bench") for n in ok["stages"])  # latency is no objective


@needs_ray
def test_a_real_architecture_shares_one_pruned_model_across_settings(tmp_path: Path) -> None:
    """transformers' BERT (attention heads pruned) with a ViT: quantization settings do not
    change a pruned model, so one prune serves both trials, and each trial's build still gets
    its own settings (not those of the trial that pruned)."""
    from tests.zoo import zoo_recipe

    recipe = zoo_recipe("bert_vit_concat", tmp_path, {
        "model.import_path": [str(REPO)],
        "prune": {"branches": {"text": 0.5}, "round_to": 2, "recover": {"mode": "none"}},
        "run": {"variants": ["onnxruntime-int8"]},
    })  # fmt: skip
    out = tmp_path / "out"
    grid = ["--grid", "quantization.per_channel=true,false", "--objective", "accuracy,size"]
    result = sweep(str(recipe), *grid, "--workers", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    data = read(out)
    first, second = data["trials"]
    assert first["stages"]["prune"]["key"] == second["stages"]["prune"]["key"]
    assert data["counts"]["run"] == 1 + 2 + 2  # one prune; a build and a compare per trial
    builds = [t["stages"]["build:onnxruntime-int8"]["key"] for t in data["trials"]]
    assert builds[0] != builds[1]
    for trial in data["trials"]:
        manifest = json.loads((Path(trial["points"][0]["artifact"]) / "manifest.json").read_text())
        quantization = manifest["recipe"]["quantization"]
        assert quantization["per_channel"] == trial["overrides"]["quantization.per_channel"]
        assert manifest["recipe"]["model"]["weights"].endswith("pruned.safetensors")
        assert trial["points"][0]["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--grid", "quantization.methd=minmax"], 3, "has no field 'methd'"),
        (["--grid", "quantization.method=minmax,fancy"], 3, "quantization.method=fancy"),
        (["--grid", "prune.branches.vision=0.5"], 3, "'vision' is not a branch"),
        (["--grid", "quantization.method=0..1"], 3, "not a range"),
        (["--grid", "prune.ratio=0.1..0.5"], 3, "a grid needs listed values"),
        (["--grid", "name=a,b"], 3, "cannot be swept"),
        (["--grid", "targets.nope.x=1"], 3, "'nope' is not a target"),
        (["--grid", "bench.iterations=10,10"], 3, "lists a value twice"),
        (["--grid", "quantization.op_types=[Conv"], 3, "is not a YAML value"),
        (["--grid", "bench.iterations=1.5..30", "--search", "optuna"], 3, "takes integers"),
        (
            ["--grid", "run.variants=tensorrt-int8,onnxruntime-int8"],
            3,
            "cannot sweep tensorrt-int8",
        ),
        ([], 3, "nothing to sweep"),
        (["--grid", "prune.ratio=0.1,0.2", "--search", "optuna"], 3, "one variant per trial"),
        (["--grid", "prune.ratio=0.1,0.2", "--on", "nosuch"], 15, "unknown device 'nosuch'"),
        (["--grid", "prune.ratio=0.1,0.2", "--objective", "speed"], 3, "objectives"),
        (["--grid", "prune.ratio=0.1,0.2", "--workers", "2", "--address", "h:1"], 17, "--workers"),
    ],
)
def test_bad_input_is_refused_before_any_work(
    args: list[str], code: int, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMEDGE_DEVICES", str(tmp_path / "devices.yaml"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["sweep", str(REFERENCE), *args, "-o", str(out)])
    assert result.exit_code == code, result.output
    assert words in result.output
    assert "Traceback" not in result.output
    assert not (out / "sweep.json").exists()


def test_without_ray_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    grid = ["--grid", "prune.ratio=0.1,0.2", "-o", str(tmp_path / "out")]
    result = runner.invoke(app, ["sweep", str(REFERENCE), *grid])
    assert result.exit_code == 5, result.output
    assert "mmedge[sweep]" in result.output


def test_a_directory_of_something_else_is_refused(tmp_path: Path) -> None:
    if not HAS_RAY:
        pytest.skip("needs Ray")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    grid = ["--grid", "prune.ratio=0.1,0.2", "-o", str(tmp_path / "out")]
    result = runner.invoke(app, ["sweep", str(REFERENCE), *grid])
    assert result.exit_code == 9, result.output
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --- mechanics ---------------------------------------------------------------------------


def _point(trial: str, acc: float, ms: float, mb: float, **extra: Any) -> dict[str, Any]:
    return {"trial": trial, "variant": "v", "device": "local", "status": "ok",
            "accuracy": acc, "p50_ms": ms, "mb": mb, **extra}  # fmt: skip


def test_pareto_keeps_the_non_dominated_once() -> None:
    from mmedge.sweep.front import fronts, pareto

    objectives = ["accuracy", "latency", "size"]
    a = _point("a", 95, 2.0, 1.0)
    b = _point("b", 94, 1.0, 1.0)  # faster, less accurate: both on the front
    c = _point("c", 94, 2.0, 1.0)  # dominated by a and b
    d = _point("d", 95, 2.0, 1.0)  # a's figures again: one point
    e = _point("e", 99, 0.5, 0.1, within=False)  # outside the constraints: never on it
    f = _point("f", 90, None, 0.5)  # not measured: cannot be placed
    assert [p["trial"] for p in pareto([a, b, c, d, e, f], objectives)] == ["a", "b"]
    # Fewer objectives, fewer trade-offs: on accuracy and size alone a dominates b.
    assert [p["trial"] for p in pareto([a, b, c], ["accuracy", "size"])] == ["a"]
    other = {**b, "device": "pi"}
    assert set(fronts([a, c, other], objectives)) == {"local", "pi"}


def test_store_publishes_whole_entries_once(tmp_path: Path) -> None:
    from mmedge.sweep.store import Store

    store = Store(tmp_path / "cache")
    src = tmp_path / "run"
    (src / "v").mkdir(parents=True)
    (src / "v" / "model.onnx").write_bytes(b"one")
    assert store.put("k", src, ["v"], {"summary": {"bytes": 3}})
    assert not store.put("k", src, ["v"], {"summary": {"bytes": 3}})  # the second is dropped
    assert store.get("k") == {"summary": {"bytes": 3}, "units": ["v"]}
    trial = tmp_path / "trial"
    store.materialize("k", trial)
    assert (trial / "v" / "model.onnx").read_bytes() == b"one"
    assert (
        os.stat(trial / "v" / "model.onnx").st_ino
        == os.stat(store.entry("k") / "v" / "model.onnx").st_ino
    )
    assert not (trial / "v" / "model.onnx").stat().st_mode & 0o222  # read-only, linked
    (store.entry("k") / "v" / "model.onnx").unlink()  # a broken entry is no entry...
    assert store.get("k") is None
    assert store.put("k", src, ["v"], {"summary": {}})  # ...and is replaced
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_space_values_and_fields() -> None:
    from mmedge.recipe import load_recipe
    from mmedge.sweep.space import field_annotation, normalized, parse_grid, parse_values
    from mmedge.sweep.spec import Range

    assert parse_values("0.5,1,true,null,minmax") == [0.5, 1, True, None, "minmax"]
    assert parse_values("0.1..0.6") == Range(low=0.1, high=0.6)
    recipe = load_recipe(REFERENCE)
    space = normalized(parse_grid(["run.variants=onnxruntime-int8,onnxruntime-fp32+openvino-int8",
                                   "prune.branches.text=0.25,0.5"]), recipe)  # fmt: skip
    assert space["run.variants"] == [["onnxruntime-int8"], ["onnxruntime-fp32", "openvino-int8"]]
    assert field_annotation("targets.openvino.nncf.preset", recipe) is not None


def test_tasks_must_fit_a_node_and_a_gpu_is_found_with_them() -> None:
    from mmedge.errors import ClusterError
    from mmedge.sweep.cluster import Cluster, check_fits

    cpu_node = {"resources": {"CPU": 2.0, "memory": 8 * 2**30}}
    gpu_node = {"resources": {"CPU": 8.0, "GPU": 1.0, "memory": 64 * 2**30}}
    small_gpu = {"resources": {"CPU": 1.0, "GPU": 1.0, "memory": 2 * 2**30}}
    assert check_fits(Cluster(None, [cpu_node]), 1, 1) is False
    assert check_fits(Cluster(None, [cpu_node, gpu_node]), 1, 1) is True
    assert check_fits(Cluster(None, [cpu_node, small_gpu]), 2, 4) is False  # not on one node
    with pytest.raises(ClusterError, match="no node of the cluster has 4 CPUs"):
        check_fits(Cluster(None, [cpu_node]), 4, 1)


def test_ranges_follow_the_field_type_and_constraints_judge_measured_points() -> None:
    from mmedge.recipe import load_recipe
    from mmedge.sweep.driver import outside
    from mmedge.sweep.space import normalized, parse_grid
    from mmedge.sweep.spec import Constraints

    recipe = load_recipe(REFERENCE)
    space = normalized(parse_grid(["prune.recover.temperature=1..8", "bench.iterations=10..90"]),
                       recipe)  # fmt: skip
    assert space["prune.recover.temperature"].integer is False  # type: ignore[union-attr]
    assert space["bench.iterations"].integer is True  # type: ignore[union-attr]
    limits = Constraints(max_latency_ms=1.0, min_accuracy=90)
    assert outside({"p50_ms": 0.5, "accuracy": 95}, limits) is None
    assert "max_latency_ms" in (outside({"p50_ms": 1.5, "accuracy": 95}, limits) or "")
    assert "min_accuracy" in (outside({"p50_ms": 0.5, "accuracy": 80}, limits) or "")


def test_front_recipe_pins_the_isa_and_one_variant() -> None:
    from mmedge.recipe import load_raw, parse_recipe
    from mmedge.sweep.front import front_recipe

    raw = load_raw(REFERENCE)
    made = front_recipe(raw, {"prune.branches.text": 0.25}, "onnxruntime-int8", "x86-vnni")
    recipe = parse_recipe(made)
    assert recipe.run.variants == ["onnxruntime-int8"]
    assert recipe.quantization.isa == "x86-vnni"
    assert recipe.prune is not None and recipe.prune.branches == {"text": 0.25}
    assert raw["quantization"]["isa"] == "auto"  # the sweep's own copy is untouched
