"""The device side of the fleet: one standard-library script, sent with every SSH command.

It is passed to the device's Python on the command line (``python -c BOOT VERB ARGS``), so it
works before mmedge is installed there (probe, setup) and always matches the workstation's
mmedge: nothing on the device can be stale. Verbs:

- ``probe``: the device's fingerprint (CPU, memory, OS, Python, GPU, Jetson, governor...).
- ``push``: receive the blobs of a content-addressed tree the device lacks, then assemble it.
- ``pull``: a directory under the workdir, as a tar stream (engines built on the device).
- ``exec``: run the device's mmedge under the measurement lock, with hygiene readings before
  and after, and kill it when the workstation goes away (stdin closes: Ctrl-C, lost link).
- ``setup``: a virtual environment with mmedge's runtime side installed.

Results are one JSON line on stdout after MARK, so a login script's chatter cannot be taken
for them. Only the standard library, and Python 3.8 syntax (JetPack 5 ships 3.8).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Any

MARK = "@@mmedge-agent "
STARTED = "@@mmedge-agent-started"
# Exit codes of the agent itself (a remote mmedge's own code travels inside the result).
BAD_REQUEST, NO_SPACE, FAILED = 64, 65, 66
_ISA_FLAGS = [
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
]


def _say(payload: object) -> None:
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _run(argv: list[str], timeout: float = 20) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _workdir(args: dict[str, Any]) -> str:
    path = os.path.expanduser(args.get("workdir") or "~/.mmedge")
    os.makedirs(path, exist_ok=True)
    return path


# --- readings -----------------------------------------------------------------------------


def hygiene() -> dict[str, Any]:
    """What decides whether a latency is trustworthy: governor, heat, throttling, load."""
    governors = sorted(
        {
            _read(p) or "?"
            for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")
        }
    )
    temps = []
    for zone in glob.glob("/sys/class/thermal/thermal_zone*"):
        raw = _read(zone + "/temp")
        if raw and raw.lstrip("-").isdigit():
            temps.append((int(raw) / 1000.0, _read(zone + "/type") or zone))
    throttles = 0
    for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/*_throttle_count"):
        raw = _read(p)
        throttles += int(raw) if raw and raw.isdigit() else 0
    hottest = max(temps) if temps else None
    return {
        "time": time.time(),
        "governors": governors,
        "temperature_c": round(hottest[0], 1) if hottest else None,
        "hottest_zone": hottest[1] if hottest else None,
        "throttle_count": throttles,
        "load": list(os.getloadavg()),
    }


def _cpu() -> dict[str, Any]:
    model, flags = None, set()
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    if not model:
        model = _read("/proc/device-tree/model") or platform.processor() or None
    return {"model": model, "isa_flags": sorted(f for f in flags if f in _ISA_FLAGS)}


def _memory_gb() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _os_name() -> str:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def _nvidia() -> dict[str, Any] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    gpus = _run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]) or ""
    header = _run([smi]) or ""
    cuda = None
    if "CUDA Version:" in header:
        cuda = header.split("CUDA Version:")[1].split()[0]
    return {"gpus": [g.strip() for g in gpus.splitlines() if g.strip()], "cuda": cuda}


def _jetson() -> dict[str, Any] | None:
    model = (_read("/proc/device-tree/model") or "").strip("\x00")
    release = _read("/etc/nv_tegra_release")
    if "jetson" not in model.lower() and release is None:
        return None
    mode = None
    if shutil.which("nvpmodel"):
        mode = _run(["nvpmodel", "-q"])
    return {"model": model or None, "l4t": release.splitlines()[0] if release else None,
            "power_mode": mode}  # fmt: skip


def _tensorrt() -> dict[str, Any]:
    version = None
    with contextlib.suppress(Exception):
        import tensorrt

        version = getattr(tensorrt, "__version__", None)
    trtexec = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.path.exists(p)), None
    )
    return {"version": version, "trtexec": trtexec}


def _mmedge() -> dict[str, Any] | None:
    """The device's mmedge, if this Python has one: version, artifact format, and its doctor."""
    try:
        import mmedge
    except Exception:
        return None
    doctor = _run([sys.executable, "-m", "mmedge", "doctor", "--json"], timeout=120)
    info = {
        "version": getattr(mmedge, "__version__", None),
        "format": getattr(mmedge, "ARTIFACT_FORMAT", None),
        "doctor": None,
    }
    with contextlib.suppress(ValueError, TypeError):
        info["doctor"] = json.loads(doctor or "")
    return info


def probe(args: dict[str, Any]) -> int:
    workdir = _workdir(args)
    disk = shutil.disk_usage(workdir)
    _say(
        {
            "hostname": socket.gethostname(),
            "os": _os_name(),
            "kernel": platform.release(),
            "arch": platform.machine(),
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "memory_gb": _memory_gb(),
            "python": {"version": platform.python_version(), "path": sys.executable},
            "workdir": workdir,
            "disk_free_gb": round(disk.free / 1e9, 2),
            "nvidia": _nvidia(),
            "jetson": _jetson(),
            "tensorrt": _tensorrt(),
            "hygiene": hygiene(),
            "mmedge": _mmedge(),
        }
    )
    return 0


# --- content-addressed push and pull ------------------------------------------------------


def _receive(blobs: str, digest: str, size: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".incoming-")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            left = size
            while left:
                chunk = sys.stdin.buffer.read(min(left, 1 << 20))
                if not chunk:
                    raise EOFError(f"the stream ended {left} bytes short of {digest[:12]}")
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if h.hexdigest() != digest:
            raise ValueError(f"blob {digest[:12]} arrived with sha256 {h.hexdigest()[:12]}")
        # Read-only: a file linked into a tree must not be rewritten in place through it.
        os.chmod(tmp, 0o444)
        os.replace(tmp, os.path.join(blobs, digest))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _assemble(workdir: str, tree: dict[str, Any], dest: str) -> None:
    """Hard-link the blobs into place (a copy across filesystems), then rename: a directory
    that exists is complete."""
    final = os.path.join(workdir, dest)
    if os.path.isdir(final):
        return
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".staging-")
    try:
        for rel, entry in tree.items():
            target = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            blob = os.path.join(workdir, "blobs", entry["sha256"])
            try:
                os.link(blob, target)
            except OSError:
                shutil.copyfile(blob, target)
        try:
            os.rename(staging, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another push assembled it first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def push(args: dict[str, Any]) -> int:
    workdir = _workdir(args)
    blobs = os.path.join(workdir, "blobs")
    os.makedirs(blobs, exist_ok=True)
    tree = args["tree"]
    bad = [rel for rel in tree if rel.startswith("/") or ".." in rel.split("/")]
    if bad or ".." in args["dest"].split("/"):
        _say({"error": "bad_tree", "paths": bad[:5]})
        return BAD_REQUEST
    wanted = {e["sha256"]: e["size"] for e in tree.values()}
    present = os.path.isdir(os.path.join(workdir, args["dest"]))
    missing = [] if present else [d for d in wanted if not os.path.isfile(os.path.join(blobs, d))]
    _say({"missing": missing})
    try:
        for digest in missing:
            _receive(blobs, digest, wanted[digest])
        _assemble(workdir, tree, args["dest"])
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            disk = shutil.disk_usage(blobs)
            _say({"error": "no_space", "free_bytes": disk.free, "path": blobs})
            return NO_SPACE
        raise
    _say({"received": len(missing), "path": os.path.join(workdir, args["dest"])})
    return 0


def pull(args: dict[str, Any]) -> int:
    root = os.path.join(_workdir(args), args["path"])
    files = []
    for name in sorted(args.get("names") or os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            for top, _, found in sorted(os.walk(path)):
                files += [os.path.join(top, f) for f in sorted(found)]
        elif os.path.isfile(path):
            files.append(path)
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        for path in files:
            tar.inodes = {}  # type: ignore[attr-defined]  # blobs are hard-linked: files, not links
            tar.add(path, arcname=os.path.relpath(path, root), recursive=False)
    return 0


# --- running the device's mmedge ----------------------------------------------------------


def _version_check(expected: str | None) -> dict[str, Any] | None:
    try:
        import mmedge
    except Exception as err:
        return {"error": "no_mmedge", "detail": f"{type(err).__name__}: {err}"}
    found = getattr(mmedge, "ARTIFACT_FORMAT", None)
    if expected and found != expected:
        return {"error": "format", "found": found, "version": getattr(mmedge, "__version__", None)}
    return None


class _Lock:
    """One measurement at a time on this device: an flock, released by the kernel even when
    the holder is killed."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.waited = 0.0

    def acquire(self) -> None:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.2)
        self.waited = time.monotonic() - start
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (mmedge cleans up as for Ctrl-C), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def execute(args: dict[str, Any]) -> int:
    workdir = _workdir(args)
    problem = _version_check(args.get("format"))
    if problem is not None:
        _say(problem)
        return 0
    lock = _Lock(os.path.join(workdir, "measure.lock")) if args.get("lock") else None
    state: dict[str, Any] = {"proc": None, "gone": False}

    guard = threading.Lock()  # spawning and noticing EOF exclude each other: no orphan

    def watch_stdin() -> None:
        # The workstation keeps our stdin open and never writes: EOF means it went away.
        # os.read, not sys.stdin: a daemon thread inside a buffered read aborts the exit.
        while os.read(0, 1 << 16):
            pass
        with guard:
            state["gone"] = True
            if state["proc"] is None:
                os._exit(FAILED)  # nothing started yet (waiting for the lock): nothing to stop
        _stop(state["proc"])

    threading.Thread(target=watch_stdin, daemon=True).start()
    if lock is not None:
        lock.acquire()
    before = hygiene()
    time.sleep(float(args.get("cooldown") or 0))
    with guard:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmedge", *args["argv"]],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        state["proc"] = proc
    out, err = proc.communicate()
    _say(
        {
            "rc": proc.returncode,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace")[-20000:],
            "hygiene": {"before": before, "after": hygiene()},
            "lock_wait_s": round(lock.waited, 3) if lock else None,
        }
    )
    return 0


def setup(args: dict[str, Any]) -> int:
    """A virtual environment at ``venv`` with ``requirement`` installed, from ``wheels`` (a
    pushed directory) with or without the package index."""
    workdir = _workdir(args)
    venv = os.path.join(workdir, args["venv"])
    log = []

    def step(argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True)
        log.append(
            {"argv": argv, "rc": done.returncode, "output": (done.stdout + done.stderr)[-6000:]}
        )
        if done.returncode != 0:
            raise RuntimeError(" ".join(argv))

    try:
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python):
            # JetPack's TensorRT lives in the system's site-packages, not on PyPI.
            shared = ["--system-site-packages"] if args.get("system_site_packages") else []
            step([sys.executable, "-m", "venv", *shared, venv])
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--upgrade"]
        links = os.path.join(workdir, args.get("wheels") or "")
        if args.get("wheels"):
            pip += ["--find-links", links] + ([] if args.get("index") else ["--no-index"])
        step(pip + [r.replace("{wheels}", links) for r in args["requirements"]])
        for wheel in args.get("reinstall") or []:  # same version, other code: replaced anyway
            step([*pip, "--no-deps", "--force-reinstall", wheel.replace("{wheels}", links)])
    except (RuntimeError, OSError) as err:
        _say({"error": "setup", "detail": str(err), "log": log})
        return 0
    _say({"python": python, "log": log})
    return 0


VERBS = {"probe": probe, "push": push, "pull": pull, "exec": execute, "setup": setup}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in VERBS:
        sys.stderr.write(f"mmedge agent: expected VERB ARGS, verbs: {', '.join(VERBS)}\n")
        return BAD_REQUEST
    sys.stdout.write(STARTED + "\n")
    sys.stdout.flush()
    args = json.loads(base64.b64decode(argv[1]).decode())
    if argv[0] == "push":  # the tree is the first line of stdin (it can be long)
        args.update(json.loads(sys.stdin.buffer.readline().decode()))
    return VERBS[argv[0]](args)


if __name__ == "__main__":
    # ``python -c`` puts the current directory first: a ``~/mmedge`` checkout on the device
    # must not stand in for the venv's package.
    if sys.path and sys.path[0] in ("", "."):
        sys.path.pop(0)
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # at once: the stdin watcher may still be blocked in its read
