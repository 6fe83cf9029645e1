"""The device fleet end to end, against a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The "devices" are workdirs on this machine reached through ssh aliases; dev-a is set up by
`mmedge device setup --wheelhouse` (offline, no torch) and dev-b shares its Python with a
workdir of its own. Every fault the fleet promises to handle is reproduced for real: a
closed port, a refused key, a changed host key, no Python, no mmedge, another artifact
format, a runtime missing, a full disk, a connection killed mid-bench, Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mmedge.cli import app
from tests.conftest import Built, write_recipe
from tests.sshd import WHEELHOUSE, SshServer, require_openssh, start_sshd

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd with aliases dev-a, dev-b; dev-a set up from the wheelhouse, dev-b sharing its
    Python. The inventory and ssh config are the test's own (MMEDGE_DEVICES, -F)."""
    require_openssh()
    if not (WHEELHOUSE / ".stamp").is_file():
        pytest.skip(f"no wheelhouse at {WHEELHOUSE}: run scripts/setup.sh")
    root = tmp_path_factory.mktemp("fleet")
    with (
        pytest.MonkeyPatch.context() as mp,
        start_sshd(root / "sshd", ["dev-a", "dev-b"]) as server,
    ):
        mp.setenv("MMEDGE_SSH_CONFIG", str(server.config))
        mp.setenv("MMEDGE_DEVICES", str(root / "devices.yaml"))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        ok(cli("device", "add", "dev-a", "--ssh", "dev-a", "--workdir", str(root / "wa")))
        setup = cli("device", "setup", "dev-a", "--wheelhouse", str(WHEELHOUSE), "--json")
        ok(setup)
        python = json.loads(setup.stdout)["python"]
        ok(cli("device", "add", "dev-b", "--ssh", "dev-b", "--python", python,
               "--workdir", str(root / "wb")))  # fmt: skip
        server.root = root  # type: ignore[attr-defined]
        server.python = python  # type: ignore[attr-defined]
        yield server


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    return result


def fails(result: Result, code: int, *needles: str) -> str:
    text = " ".join((result.stderr + result.stdout).split())
    assert result.exit_code == code, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_setup_installs_the_runtime_side_without_torch(fleet: SshServer) -> None:
    python = fleet.python  # type: ignore[attr-defined]
    probe = json.loads(ok(cli("device", "probe", "dev-a", "--json")).stdout)
    assert probe["python"]["path"] == python
    assert probe["mmedge"]["format"] == "mmedge-artifact/1"
    assert probe["mmedge"]["doctor"]["targets"]["onnxruntime"]["runs_here"] is True
    assert probe["cpu"]["model"] and probe["cores"] >= 1 and probe["memory_gb"] > 0
    torch = subprocess.run(fleet.ssh("dev-a", python, "-c", "'import torch'"), env=fleet.env(),
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    # Again: the same wheels (mmedge's is built reproducibly) are not sent twice.
    again = json.loads(ok(cli("device", "setup", "dev-a", "--wheelhouse", str(WHEELHOUSE),
                              "--json")).stdout)  # fmt: skip
    assert again["pushed"]["sent_files"] == 0 and again["pushed"]["files"] > 10


def test_inventory(fleet: SshServer) -> None:
    listed = json.loads(ok(cli("device", "list", "--json")).stdout)
    assert set(listed["devices"]) >= {"dev-a", "dev-b"}
    fails(cli("device", "add", "dev-a", "--ssh", "x"), 15, "exists")
    fails(cli("device", "add", "bad,name", "--ssh", "x"), 15, "not allowed")
    fails(cli("device", "remove", "nope"), 15, "unknown device 'nope'", "dev-a, dev-b")
    fails(cli("bench", "/nonexistent", "--on", "nope"), 15, "unknown device 'nope'")
    ok(cli("device", "add", "tmp", "--ssh", "x"))
    ok(cli("device", "remove", "tmp"))
    assert "tmp" not in json.loads(ok(cli("device", "list", "--json")).stdout)["devices"]


def test_bench_and_compare_on_two_devices(fleet: SshServer, built: Built) -> None:
    first = json.loads(ok(cli("bench", str(built.int8), "--on", "dev-a,dev-b", "--json")).stdout)
    for name in ("dev-a", "dev-b"):
        result = first["devices"][name]
        assert result["device"] == name and result["latency_ms"]["p50"] > 0
        assert result["precision"] == "int8"
        assert result["hygiene"]["before"]["load"] and "governors" in result["hygiene"]["after"]
        assert (built.int8 / f"bench-on-{name}.json").is_file()
    # Content-addressed: the second push of the same artifact sends nothing.
    again = json.loads(ok(cli("bench", str(built.int8), "--on", "dev-a", "--json")).stdout)
    assert again["devices"]["dev-a"]["pushed"]["sent_bytes"] == 0
    assert first["devices"]["dev-a"]["pushed"]["sent_bytes"] > 0

    local = json.loads(ok(cli("compare", str(built.int8), "--json")).stdout)
    remote = json.loads(ok(cli("compare", str(built.int8), "--on", "dev-a", "--json")).stdout)
    there = remote["devices"]["dev-a"]
    # The same eval set (both shapes), the same reference outputs, the same runtime.
    assert there["samples"] == local["samples"] == 24
    assert there["top1_agreement"] == pytest.approx(local["top1_agreement"])
    assert there["outputs"]["logits"]["cosine"] == pytest.approx(
        local["outputs"]["logits"]["cosine"], abs=1e-6
    )
    assert there["reference"].startswith("pytorch-fp32")


def test_compare_gate_failing_on_the_device_exits_7(fleet: SshServer, tmp_path: Path) -> None:
    from mmedge.artifacts import build_artifact
    from mmedge.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path, {"compare.min_cosine": 1.0}))
    build_artifact(recipe, "onnxruntime", "int8", tmp_path / "int8")
    fails(cli("compare", str(tmp_path / "int8"), "--on", "dev-a"), 7, "gate failed on dev-a")
    saved = json.loads((tmp_path / "int8" / "compare-on-dev-a.json").read_text())
    assert saved["passed"] is False


def _run_recipe(tmp_path: Path) -> Path:
    return write_recipe(
        tmp_path,
        {
            "run": {"variants": ["onnxruntime-fp32"], "latency_rounds": 2,
                    "latency_seconds": 0.2, "compare_samples": 24},
            "bench": {"warmup": 2, "duration_s": 1.5, "threads": 1},
        },
    )  # fmt: skip


def test_run_on_two_devices_and_a_connection_lost_mid_bench(
    fleet: SshServer, tmp_path: Path
) -> None:
    recipe, out = _run_recipe(tmp_path), tmp_path / "run"
    ok(cli("run", str(recipe), "-o", str(out), "--on", "dev-a,dev-b"))
    report = json.loads((out / "report.json").read_text())
    for name in ("dev-a", "dev-b"):
        row = report["devices"][name]["variants"]["onnxruntime-fp32"]
        assert row["latency_ms"]["p50"] > 0 and row["top1_agreement"] == 1.0
        assert row["branch_ms"], "per-branch time profiled on the device"
        assert report["devices"][name]["fingerprint"]["cpu"]
    assert "dev-a p50 ms" in (out / "report.md").read_text()

    # Kill dev-a's connection while its bench runs: that step fails, dev-b's finishes.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmedge", "run", str(recipe), "-o", str(out), "--on",
         "dev-a,dev-b", "--force", "bench@dev-a", "--force", "bench@dev-b"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_remote(fleet, "bench", proc)
    time.sleep(0.5)
    _kill_connection_of(fleet, "wa")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 15, err
    assert "bench@dev-a:onnxruntime-fp32" in err and "lost" in err
    steps = json.loads((out / "run.json").read_text())["steps"]
    assert steps["bench@dev-a:onnxruntime-fp32"]["status"] == "failed"
    assert steps["bench@dev-b:onnxruntime-fp32"]["status"] == "ok"
    _wait_no_remote(fleet, "bench")  # the device's watchdog stopped the orphaned bench

    # The next run redoes only that step (and the probes, read afresh every run).
    ok(cli("run", str(recipe), "-o", str(out), "--on", "dev-a,dev-b"))
    steps = json.loads((out / "run.json").read_text())["steps"]
    redone = {n for n, s in steps.items() if s["status"] == "ok"}
    assert redone == {"bench@dev-a:onnxruntime-fp32", "probe@dev-a", "probe@dev-b"}


def test_ctrl_c_stops_the_bench_on_the_device(fleet: SshServer, built: Built) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmedge", "bench", str(built.fp32), "--on", "dev-a",
         "--duration", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A background job's shell ignores SIGINT, and children inherit that (CI may run us so).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    _wait_for_remote(fleet, "bench", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _wait_no_remote(fleet, "bench")


def _remote_with(fleet: SshServer, word: str) -> list[Any]:
    found = []
    for p in fleet.remote_processes():
        try:
            cmd = p.cmdline()
        except Exception:
            continue
        if "-m" in cmd and "mmedge" in cmd and word in cmd:
            found.append(p)
    return found


def _wait_for_remote(fleet: SshServer, word: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not _remote_with(fleet, word):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the remote command never started"
        time.sleep(0.1)


def _wait_no_remote(fleet: SshServer, word: str) -> None:
    deadline = time.monotonic() + 20
    while _remote_with(fleet, word):
        assert time.monotonic() < deadline, "a remote mmedge was left running on the device"
        time.sleep(0.2)


def _kill_connection_of(fleet: SshServer, workdir: str) -> None:
    """SIGKILL the sshd serving the device whose bench runs in ``workdir``."""

    for p in _remote_with(fleet, "bench"):
        if workdir in p.cwd():
            for parent in p.parents():
                if parent.name() == "sshd" and parent.pid != fleet.pid:
                    parent.kill()
                    return
    raise AssertionError("no connection found to kill")


@pytest.fixture()
def device(fleet: SshServer, tmp_path: Path) -> Iterator[Any]:
    """Add a throwaway device; removed afterwards."""
    added: list[str] = []

    def add(name: str, *args: str) -> str:
        ok(cli("device", "add", name, *args, "--workdir", str(tmp_path / name)))
        added.append(name)
        return name

    yield add
    for name in added:
        cli("device", "remove", name)


def test_faults_before_the_device_runs_anything(
    fleet: SshServer, built: Built, device: Any
) -> None:
    closed = fleet.add_alias("dev-down", port=_free_port())
    fails(cli("device", "probe", device("down", "--ssh", closed)), 15, "cannot reach down",
          "Connection refused")  # fmt: skip
    bad_key = fleet.bad_key_alias()
    fails(cli("bench", str(built.int8), "--on", device("badkey", "--ssh", bad_key)), 15,
          "refused authentication", "never passwords")  # fmt: skip
    changed = fleet.wrong_host_key_alias()
    text = fails(cli("device", "probe", device("changed", "--ssh", changed)), 16, "CHANGED")
    assert "SHA256:" in text
    fails(cli("device", "probe", device("nopython", "--ssh", "dev-a", "--python",
                                        "/nonexistent/python3")), 15, "no Python")  # fmt: skip
    fails(cli("bench", str(built.int8), "--on", device("nommedge", "--ssh", "dev-a", "--python",
                                                        "/usr/bin/python3")),
          15, "has no mmedge", "device setup nommedge")  # fmt: skip


def test_unknown_host_key_is_refused_until_accepted(fleet: SshServer, device: Any) -> None:
    empty = fleet.root / "empty_known_hosts"  # type: ignore[attr-defined]
    empty.write_text("")
    alias = fleet.add_alias("dev-new", known_hosts=empty)
    name = device("new", "--ssh", alias, "--python", fleet.python)  # type: ignore[attr-defined]
    fails(cli("device", "probe", name), 16, "not in known_hosts", "presents SHA256:")
    ok(cli("device", "probe", name, "--accept-new-host-key"))
    ok(cli("device", "probe", name))  # now known


def test_another_artifact_format_and_a_missing_runtime(
    fleet: SshServer, built: Built, tmp_path: Path, device: Any
) -> None:
    fake = tmp_path / "fake"
    (fake / "mmedge").mkdir(parents=True)
    (fake / "mmedge" / "__init__.py").write_text(
        '__version__ = "0.0.1"\nARTIFACT_FORMAT = "mmedge-artifact/0"\n'
    )
    wrapper = tmp_path / "python-old-mmedge"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec /usr/bin/python3 "$@"\n')
    wrapper.chmod(0o755)
    fails(cli("bench", str(built.int8), "--on", device("old", "--ssh", "dev-a", "--python",
                                                       str(wrapper))),
          15, "reads artifact format 'mmedge-artifact/0'", "device setup old")  # fmt: skip

    from mmedge.artifacts import build_artifact
    from mmedge.recipe import load_recipe

    recipe = load_recipe(built.recipe)
    build_artifact(recipe, "openvino", "fp32", tmp_path / "ov")
    fails(cli("bench", str(tmp_path / "ov"), "--on", "dev-a"), 5, "bench on dev-a",
          "openvino", "mmedge device setup dev-a --extras")  # fmt: skip


def test_a_full_disk_on_the_device_is_refused_and_leaves_nothing(
    fleet: SshServer, tmp_path: Path, device: Any
) -> None:
    from mmedge.errors import SystemLimit
    from mmedge.fleet.inventory import get_device
    from mmedge.fleet.remote import Remote

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        ok(cli("device", "add", "full", "--ssh", "dev-a", "--python", fleet.python,  # type: ignore[attr-defined]
               "--workdir", str(small / "w")))  # fmt: skip
        big = tmp_path / "big"
        big.mkdir()
        for k in range(4):  # the disk fills part-way through the push, at the third blob
            (big / f"weights-{k}.bin").write_bytes(os.urandom(400 << 10))
        with pytest.raises(SystemLimit, match="no space left on full"):
            Remote(get_device("full")).push(big)
        blobs = small / "w" / "blobs"
        import hashlib

        kept = list(blobs.iterdir())
        assert not [p for p in kept if p.name.startswith(".")], "no partial blob is left behind"
        for blob in kept:  # what did arrive whole is kept, verified, for the next push
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert not (small / "w" / "artifacts").exists()
    finally:
        cli("device", "remove", "full")
        subprocess.run(["umount", str(small)], check=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_measurement_at_a_time_per_device(fleet: SshServer, built: Built) -> None:
    """Two benches on one device: the second waits for the first (the device's lock); two
    devices do not wait for each other."""
    from mmedge.fleet.commands import bench_on, on_each
    from mmedge.fleet.inventory import get_device

    flags = ["--duration", "1.0", "--warmup", "2"]
    a = get_device("dev-a")
    same = on_each([a, a.model_copy(update={"name": "dev-a-again"})],
                   lambda remote: bench_on(remote, built.fp32, flags, save=False))  # fmt: skip
    waits = sorted(r["lock_wait_s"] for r in same.values() if isinstance(r, dict))
    assert len(waits) == 2 and waits[0] < 0.5 and waits[1] > 0.8, same
    both = on_each([a, get_device("dev-b")],
                   lambda remote: bench_on(remote, built.fp32, flags, save=False))  # fmt: skip
    assert all(isinstance(r, dict) and r["lock_wait_s"] < 0.5 for r in both.values()), both


def test_build_on_refuses_what_is_not_a_bundle_and_a_device_without_tensorrt(
    fleet: SshServer, built: Built, tmp_path: Path
) -> None:
    fails(cli("build", str(built.int8), "--on", "dev-a"), 10, "build --on is for targets")
    ok(cli("export", str(built.recipe), "--target", "tensorrt", "-o", str(tmp_path / "b")))
    fails(cli("build", str(tmp_path / "b"), "--on", "dev-a"), 5, "build on dev-a",
          "mmedge device setup dev-a --extras")  # fmt: skip
    assert not (tmp_path / "b@dev-a").exists(), "nothing mirrored from a failed build"


def test_pull_mirrors_files_back_whole(fleet: SshServer, built: Built, tmp_path: Path) -> None:
    from mmedge.fleet.inventory import get_device
    from mmedge.fleet.remote import Remote

    remote = Remote(get_device("dev-a"))
    pushed = remote.push(built.fp32)
    copied = remote.pull(pushed.path, tmp_path / "mirror", ["manifest.json", "model.onnx"])
    assert sorted(copied) == ["manifest.json", "model.onnx"]
    for name in copied:
        assert (tmp_path / "mirror" / name).read_bytes() == (built.fp32 / name).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["mirror"], "no staging left behind"


def test_agent_protocol_trees_timeouts_and_clean_exits(
    fleet: SshServer, built: Built, tmp_path: Path
) -> None:
    from mmedge.errors import DeviceError
    from mmedge.fleet import ssh
    from mmedge.fleet.inventory import get_device
    from mmedge.fleet.remote import Remote

    device = get_device("dev-a")
    endpoint, python = device.endpoint(), device.python
    # The agent exits 0 after a command (no abort from its stdin watcher).
    reply = ssh.call(endpoint, python, "exec",
                     {"workdir": device.workdir, "argv": ["doctor", "--json"], "lock": False})  # fmt: skip
    assert reply.rc == 0 and reply.result["rc"] == 0, reply.stderr
    # A tree with a sub-directory, names that sort differently as paths and as strings, and
    # the same content twice: every file arrives intact.
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    files = {"a/b": b"one", "a.txt": os.urandom(5000), "a-b": b"one", "z": os.urandom(70000)}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    remote = Remote(device)
    pushed = remote.push(tree)
    assert pushed.sent_files == 3  # "one" once
    copied = remote.pull(pushed.path, tmp_path / "back")
    assert {rel: (tmp_path / "back" / rel).read_bytes() for rel in copied} == files
    # A command past its timeout is stopped there too.
    pushed_fp32 = remote.push(built.fp32)
    args = {"workdir": device.workdir, "lock": False,
            "argv": ["bench", pushed_fp32.path, "--duration", "30", "--json"]}  # fmt: skip
    with pytest.raises(DeviceError, match="timed out after 3"):
        ssh.call(endpoint, python, "exec", args, timeout=3, what="bench")
    _wait_no_remote(fleet, "bench")


def test_sweep_measures_on_each_device_and_gives_each_a_front(
    fleet: SshServer, tmp_path: Path
) -> None:
    """`mmedge sweep --on local,dev-a,dev-b`: builds on the (local) Ray cluster, compare and
    bench on every device, a front and front recipes per device."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs Ray (mmedge[sweep])")
    recipe = write_recipe(tmp_path, {"model.import_path": [str(REPO)],
                                     "bench": {"warmup": 2, "iterations": 20, "threads": 1}})  # fmt: skip
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "mmedge", "sweep", str(recipe), "--workers", "1", "-o", str(out),
         "--grid", "run.variants=onnxruntime-fp32,onnxruntime-int8", "--on", "local,dev-a,dev-b"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "sweep.json").read_text())
    assert data["devices"] == ["local", "dev-a", "dev-b"]
    assert set(data["fronts"]) == {"local", "dev-a", "dev-b"}
    for trial in data["trials"]:
        variant = trial["overrides"]["run.variants"][0]
        for name in ("dev-a", "dev-b"):
            point = next(p for p in trial["points"] if p["device"] == name)
            assert point["status"] == "ok" and point["p50_ms"] > 0 and point["accuracy"] is not None
            assert (out / "trials" / trial["id"] / variant / f"bench-on-{name}.json").is_file()
        assert trial["stages"][f"bench@dev-a:{variant}"]["node"] == "dev-a"
    assert all(Path(p).is_file() for paths in data["front_recipes"].values() for p in paths)
    assert (out / "devices" / "dev-a.json").is_file()
