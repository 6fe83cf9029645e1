"""One device, seen from the workstation: probe it, push to it, run its mmedge, pull back.

Pushes are content-addressed: a directory is a tree of (path, sha256, size); the device keeps
blobs by sha256 and assembles trees from them, so a blob it holds is never sent again and an
unchanged artifact costs one round trip. Everything runs through the agent (`agent.py`).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mmedge import ARTIFACT_FORMAT
from mmedge.errors import EXIT_CODES, DeviceError, MmedgeError, OutputExistsError, SystemLimit
from mmedge.fleet import ssh
from mmedge.fleet.inventory import Device
from mmedge.hashing import sha256_file, sha256_json

_CHUNK = 1 << 20
# A remote command's own failure, relayed with its code.
_ERROR_LINE = re.compile(r"^(?:error|internal error|interrupted|terminated):\s*(.*)$")
_HINT_LINE = re.compile(r"^hint:\s*(.*)$")


class RemoteFailed(MmedgeError):
    """The device's mmedge failed; its message and exit code, prefixed with the device."""

    def __init__(self, message: str, hint: str | None, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code  # type: ignore[misc]


@dataclass
class Pushed:
    path: str  # on the device, relative to its workdir
    files: int
    sent_files: int
    sent_bytes: int
    seconds: float


@dataclass
class Ran:
    """A finished remote mmedge command."""

    rc: int
    data: dict[str, Any] | None  # its --json output
    stderr: str
    hygiene: dict[str, Any]
    lock_wait_s: float | None = None  # how long it waited for another measurement to end
    warnings: list[str] = field(default_factory=list)


# What compare/bench/check/search write beside an artifact, and what a device's TensorRT build
# adds: results, not what it runs from. Left out of a push, so measuring an artifact does not
# make it a new one for the device, and a device's engine is its own.
RESULTS = re.compile(
    r"^(?:(?:compare|parity|check|search|report|engine)(?:-on-[\w.-]+)?|bench-[\w.-]+)\.json$"
    r"|^model\.engine$|^timing\.cache$"
)
MIRROR = ".mmedge-mirror"  # marks a directory pull() made (and may replace)


def tree_of(directory: Path) -> dict[str, dict[str, Any]]:
    """The files ``directory`` runs from: relative path → sha256 and size."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and not RESULTS.match(path.name):
            rel = path.relative_to(directory).as_posix()
            found[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return found


class Remote:
    def __init__(self, device: Device, accept_new_host_key: bool = False) -> None:
        self.device = device
        self.endpoint = device.endpoint(accept_new_host_key)

    @property
    def name(self) -> str:
        return self.device.name

    def _args(self, **extra: Any) -> dict[str, Any]:
        return {"workdir": self.device.workdir, **extra}

    def probe(self) -> dict[str, Any]:
        reply = ssh.call(self.endpoint, self.device.python, "probe", self._args(), timeout=180)
        return reply.require(self.name, "probe")

    def push(self, directory: Path, kind: str = "artifacts") -> Pushed:
        """Send what the device lacks of ``directory``; return where it is there."""
        started = time.perf_counter()
        tree = tree_of(directory)
        dest = f"{kind}/{sha256_json(tree)[:32]}"
        sent = {"files": 0, "bytes": 0}

        def feed(stdin: IO[bytes], next_result: Callable[[], dict[str, Any]]) -> None:
            stdin.write((_json({"tree": tree, "dest": dest}) + "\n").encode())
            stdin.flush()
            where: dict[str, str] = {}  # the same content under two names is sent once
            for rel, entry in tree.items():
                where.setdefault(entry["sha256"], rel)
            for digest in next_result().get("missing", []):  # in the agent's order
                with (directory / where[digest]).open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        stdin.write(chunk)
                        sent["bytes"] += len(chunk)
                sent["files"] += 1
            stdin.flush()

        reply = ssh.call(self.endpoint, self.device.python, "push", self._args(), feed=feed)
        result = reply.result
        if result.get("error") == "no_space":
            raise SystemLimit(
                f"no space left on {self.name} for {directory} "
                f"({result.get('free_bytes', 0) / 1e6:.0f} MB free in {result.get('path')})",
                hint=f"free space on the device, or: mmedge device add {self.name} --ssh "
                f"{self.device.ssh} --workdir DIR on a larger disk",
            )
        if result.get("error") == "bad_tree":
            raise DeviceError(f"{directory} holds paths a device refuses: {result.get('paths')}")
        if reply.rc != 0 or "path" not in result:
            raise DeviceError(
                f"pushing {directory} to {self.name} failed (exit {reply.rc})"
                f"{ssh.detail(reply.stderr)}"
            )
        return Pushed(dest, len(tree), sent["files"], sent["bytes"],
                      round(time.perf_counter() - started, 3))  # fmt: skip

    def pull(self, path: str, out: Path, names: list[str] | None = None) -> list[str]:
        """Copy files of ``path`` (on the device) into ``out``, a mirror: staged beside it and
        renamed into place, whole or not at all. An ``out`` that is not an earlier mirror is
        refused, never replaced."""
        if out.exists() and not (out / MIRROR).is_file():
            raise OutputExistsError(
                f"{out} exists and is not a mirror mmedge made; choose another --mirror"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
        copied = []
        try:
            with (staging / ".tar").open("w+b") as sink:
                reply = ssh.call(self.endpoint, self.device.python, "pull",
                                 self._args(path=path, names=names), sink=sink)  # fmt: skip
                if reply.rc != 0:
                    raise DeviceError(
                        f"copying {path} back from {self.name} failed{ssh.detail(reply.stderr)}"
                    )
                sink.seek(0)
                with tarfile.open(fileobj=sink, mode="r|") as tar:
                    for member in tar:
                        if not member.isfile() or not _safe(member.name):
                            continue
                        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                            tar.extract(member, staging, filter="data")
                        else:
                            tar.extract(member, staging)
                        copied.append(member.name)
            (staging / ".tar").unlink()
            (staging / MIRROR).write_text(f"mirrored from {self.name}:{path}\n")
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        except tarfile.TarError as err:
            raise DeviceError(f"{self.name} sent back a damaged archive: {err}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return copied

    def mmedge(
        self,
        argv: list[str],
        lock: bool = True,
        timeout: float | None = None,
        check: bool = True,
    ) -> Ran:
        """Run ``mmedge ARGV --json`` on the device; measurements hold the device's lock."""
        args = self._args(
            argv=[*argv, "--json"],
            lock=lock,
            cooldown=self.device.cooldown_s if lock else 0,
            format=ARTIFACT_FORMAT,
        )
        reply = ssh.call(
            self.endpoint, self.device.python, "exec", args, timeout=timeout, what=argv[0]
        )
        result = reply.result
        if result.get("error") == "no_mmedge":
            raise DeviceError(
                f"{self.name} has no mmedge for {self.device.python} ({result.get('detail')})",
                hint=f"mmedge device setup {self.name}",
            )
        if result.get("error") == "format":
            raise DeviceError(
                f"mmedge {result.get('version')} on {self.name} reads artifact format "
                f"{result.get('found')!r}; this mmedge writes {ARTIFACT_FORMAT!r}",
                hint=f"install the same mmedge there: mmedge device setup {self.name}",
            )
        if "rc" not in result:
            raise DeviceError(f"{self.name} returned no result{ssh.detail(reply.stderr)}")
        data = None
        out = str(result.get("stdout") or "").strip()
        if out:
            try:
                data = json.loads(out)
            except ValueError:
                data = None
        ran = Ran(int(result["rc"]), data, str(result.get("stderr") or ""), result["hygiene"],
                  result.get("lock_wait_s"))  # fmt: skip
        ran.warnings = hygiene_warnings(ran.hygiene, self.name)
        if check and ran.rc != 0:
            raise self.failure(ran, argv[0])
        return ran

    def failure(self, ran: Ran, command: str) -> RemoteFailed:
        """The device's own error message, hint and exit code."""
        message, hint = None, None
        for line in ran.stderr.splitlines():
            if (m := _ERROR_LINE.match(line.strip())) and message is None:
                message = m.group(1)
            elif (m := _HINT_LINE.match(line.strip())) and hint is None:
                hint = m.group(1)
        message = message or (ran.stderr.strip().splitlines() or [f"exit {ran.rc}"])[-1]
        if ran.rc == 5:  # a runtime missing on the device
            hint = f"install it there: mmedge device setup {self.name} --extras TARGET[,TARGET]"
        if ran.rc not in EXIT_CODES:
            ran.rc = 1
        return RemoteFailed(f"{command} on {self.name}: {message}", hint, ran.rc)


def _safe(name: str) -> bool:
    return not name.startswith("/") and ".." not in Path(name).parts


def hygiene_warnings(hygiene: dict[str, Any], name: str) -> list[str]:
    """What makes a figure from this device suspect: a governor that scales the clock, a
    throttle during the run, heat."""
    before, after = hygiene.get("before") or {}, hygiene.get("after") or {}
    found = []
    governors = before.get("governors") or []
    if governors and governors != ["performance"]:
        found.append(
            f"{name}: CPU governor is {'/'.join(governors)}, not performance: latency varies "
            "with the clock (sudo cpupower frequency-set -g performance)"
        )
    throttled = (after.get("throttle_count") or 0) - (before.get("throttle_count") or 0)
    if throttled > 0:
        found.append(f"{name}: the CPU throttled {throttled} time(s) during the measurement")
    t0, t1 = before.get("temperature_c"), after.get("temperature_c")
    if t1 is not None and (t1 >= 85 or (t0 is not None and t1 - t0 >= 15)):
        found.append(
            f"{name}: temperature {t0} → {t1} °C ({after.get('hottest_zone')}): it may have "
            "throttled (set cooldown_s, or cool the device)"
        )
    return found


def _json(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
