"""A real OpenSSH server on 127.0.0.1 for the device-fleet tests (not a test module).

mmedge talks to devices through the system ``ssh`` client, so the tests run a real ``sshd`` rather
than a mock: host keys, known_hosts, ``BatchMode`` refusals and dropped connections behave as they
do against a board on the desk. Everything lives in the test's own directory: host key, client key,
``authorized_keys``, ``sshd_config``, and a client ``ssh_config`` with one ``Host`` alias per
"device", all on the same server::

    with start_sshd(tmp_path, ["dev-a", "dev-b"]) as server:
        done = subprocess.run(server.ssh("dev-a", "true"), env=server.env(), timeout=30)

``ssh -F CONFIG`` reads neither ``~/.ssh/config`` nor ``/etc/ssh/ssh_config`` (OpenSSH's rule for
``-F``), and the config turns the agent off (``IdentityAgent none``): nothing of the developer's
own set-up takes part. ``server.env()`` also drops ``SSH_AUTH_SOCK`` for code that builds its own
``ssh`` command line.

The remote side runs as the current user with that user's login shell and the PATH sshd gives a
session (on Debian bash also reads ``~/.bashrc`` for ssh commands): call programs by absolute path
where the test cares which one runs (a device venv's ``bin/python``).

The device side of mmedge installs from the offline wheelhouse ``scripts/setup.sh`` builds at
``.cache/wheelhouse`` (mmedge[onnxruntime]'s dependencies at the dev venv's versions, no torch);
mmedge's own wheel is not in it: :func:`build_mmedge_wheel` builds it from the checkout at test
time (about a second), so it never lags the sources. :func:`make_device_venv` does both.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SSHD = Path("/usr/sbin/sshd")
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
HOST = "127.0.0.1"


def require_openssh() -> None:
    """Skip the calling test where the OpenSSH server or client is not installed."""
    missing = [
        name
        for name, found in [
            (str(SSHD), SSHD.is_file() and os.access(SSHD, os.X_OK)),
            ("ssh", shutil.which("ssh") is not None),
            ("ssh-keygen", shutil.which("ssh-keygen") is not None),
        ]
        if not found
    ]
    if missing:
        pytest.skip(f"needs OpenSSH ({', '.join(missing)} missing; scripts/setup.sh installs it)")


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) without the ssh agent, so no developer key takes part."""
    env = dict(os.environ if base is None else base)
    for name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE"):
        env.pop(name, None)
    return env


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair without passphrase at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _quote(value: str | Path) -> str:
    """An ssh_config/sshd_config argument: double quotes keep a path with spaces whole."""
    return f'"{value}"'


def _known_hosts_line(port: int, public_key: str) -> str:
    key_type, key = public_key.split()[:2]
    # ssh looks a host on any port but 22 up as [host]:port.
    return f"[{HOST}]:{port} {key_type} {key}\n"


class SshServer:
    """A running sshd on 127.0.0.1 and the client files that reach it (see :func:`start_sshd`)."""

    def __init__(
        self,
        tmp: Path,
        *,
        port: int,
        process: subprocess.Popen[bytes],
        log: Path,
        host_public_key: str,
        client_key: Path,
        bad_key: Path,
    ) -> None:
        self.tmp = tmp
        self.port = port
        self.process = process
        self.log = log  # sshd's stderr (-e), at the LogLevel start_sshd was given
        self.host_public_key = host_public_key
        self.client_key = client_key  # accepted: it is in authorized_keys
        self.bad_key = bad_key  # a valid key pair the server does not accept
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.config = tmp / "ssh_config"  # for `ssh -F`
        self.known_hosts = tmp / "known_hosts"  # holds the server's real host key
        self._hosts: dict[str, dict[str, str]] = {}
        self.restore_known_hosts()

    # --- the client side -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The listening sshd (each connection is served by a child of it)."""
        return self.process.pid

    @property
    def aliases(self) -> list[str]:
        return list(self._hosts)

    def add_alias(
        self,
        name: str,
        *,
        identity: Path | None = None,
        known_hosts: Path | None = None,
        user: str | None = None,
        port: int | None = None,
    ) -> str:
        """A ``Host name`` entry in :attr:`config` for this server (rewritten whole each time);
        by default with the accepted client key and the known_hosts that trusts the server."""
        self._hosts[name] = {
            "HostName": HOST,
            "Port": str(port or self.port),
            "User": user or self.user,
            "IdentityFile": _quote(identity or self.client_key),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": _quote(known_hosts or self.known_hosts),
            "StrictHostKeyChecking": "yes",
        }
        self._write_config()
        return name

    def bad_key_alias(self, name: str = "dev-bad-key") -> str:
        """An alias that offers only a key the server does not accept: ssh fails with
        "Permission denied (publickey)" and exit code 255."""
        return self.add_alias(name, identity=self.bad_key)

    def wrong_host_key_alias(self, name: str = "dev-wrong-host-key") -> str:
        """An alias whose own known_hosts holds another key for this server: ssh refuses with
        "REMOTE HOST IDENTIFICATION HAS CHANGED" / "Host key verification failed", exit 255."""
        return self.add_alias(
            name, known_hosts=self.write_wrong_known_hosts(self.tmp / f"{name}.known_hosts")
        )

    def write_wrong_known_hosts(self, path: Path | None = None) -> Path:
        """Write a known_hosts that names a fresh key (not the server's) for this server's
        address; by default over :attr:`known_hosts`, so every alias sees the mismatch
        (:meth:`restore_known_hosts` undoes it)."""
        path = path or self.known_hosts
        key_dir = self.tmp / "keys"
        key = key_dir / f"impostor-{time.monotonic_ns()}"
        path.write_text(_known_hosts_line(self.port, _keygen(key, "impostor")))
        return path

    def restore_known_hosts(self) -> None:
        """:attr:`known_hosts` trusts the server's real host key again."""
        self.known_hosts.write_text(_known_hosts_line(self.port, self.host_public_key))

    def ssh(self, alias: str, *command: str | Path) -> list[str]:
        """The argv of ``ssh -F CONFIG alias -- command...``. As with any ssh, the words are
        joined with spaces and the remote shell parses them: pass ``shlex.join(argv)`` as a
        single word to run an exact argv."""
        return ["ssh", "-F", str(self.config), alias, "--", *map(str, command)]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment to run ssh in: ``base`` (default: os.environ) without an agent."""
        return clean_env(base)

    def _write_config(self) -> None:
        lines = []
        for name, options in self._hosts.items():
            lines.append(f"Host {name}")
            lines += [f"    {key} {value}" for key, value in options.items()]
            lines.append("")
        # Options no alias sets (ssh takes each option's first value, so order does not matter).
        lines += [
            "Host *",
            "    BatchMode yes",
            "    IdentityAgent none",
            "    GlobalKnownHostsFile /dev/null",
            "    UpdateHostKeys no",
            "    ControlMaster no",
            "    ControlPath none",
            "    ConnectTimeout 10",
            "",
        ]
        self.config.write_text("\n".join(lines))

    # --- the server side -------------------------------------------------------------------

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes: the listener's children, one per connection."""
        with contextlib.suppress(psutil.NoSuchProcess):
            return [child.pid for child in psutil.Process(self.pid).children()]
        return []

    def kill_connections(self, *, commands: bool = False) -> list[int]:
        """SIGKILL every sshd process that serves a connection, as a network drop would end it
        for the client: ssh exits 255 at once. The remote commands are left running (reparented
        to init, their stdin at EOF) unless ``commands``. Returns the pids signalled."""
        killed: list[int] = []
        for pid in self.connection_pids():
            with contextlib.suppress(psutil.NoSuchProcess):
                conn = psutil.Process(pid)
                tree = [conn, *conn.children(recursive=True)]
                for proc in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if commands or proc.name().startswith("sshd"):
                            proc.kill()
                            killed.append(proc.pid)
        return killed

    def remote_processes(self) -> list[psutil.Process]:
        """Every live process started by a session on this server, whether still under sshd or
        orphaned by a dropped connection (found by its ``SSH_CONNECTION``, which names this
        server's port): what a test checks to see that nothing is left on the device."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                conn = proc.environ().get("SSH_CONNECTION", "").split()
                ours = len(conn) == 4 and conn[2] == HOST and conn[3] == str(self.port)
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def stop(self) -> None:
        """Stop every connection, every process a session left, then the listener (SIGTERM on
        the listener alone would leave live connections running). Safe to call twice."""
        leftovers: list[psutil.Process] = []
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftovers += psutil.Process(self.pid).children(recursive=True)
        leftovers += self.remote_processes()
        # Connections first, while the listener is alive to reap them.
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        _wait_gone(leftovers, timeout=5)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SshServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until each process has ended or is a zombie (which runs nothing; an orphan's waits for
    init to reap it, which takes a while in some containers)."""
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        procs = alive
        if procs:
            time.sleep(0.01)


def _sshd_config(tmp: Path, port: int, host_key: Path, log_level: str) -> str:
    return "\n".join(
        [
            f"ListenAddress {HOST}",
            f"Port {port}",
            f"HostKey {_quote(host_key)}",
            f"PidFile {_quote(tmp / 'sshd.pid')}",
            f"AuthorizedKeysFile {_quote(tmp / 'authorized_keys')}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # The key files live in a pytest tmp dir, whose modes sshd would otherwise judge.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            # A client that vanishes without closing TCP is dropped within a few seconds.
            "ClientAliveInterval 2",
            "ClientAliveCountMax 3",
            # Fleet tests open many connections at once; the default 10:30:100 drops some.
            "MaxStartups 100",
            "MaxSessions 100",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            # scp speaks sftp since OpenSSH 9.0; internal-sftp needs no sftp-server binary.
            "Subsystem sftp internal-sftp",
            f"LogLevel {log_level}",
            "",
        ]
    )


def _wait_for_banner(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """True once the port answers with an SSH banner; False if sshd exited first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            sock.settimeout(2)
            if sock.recv(64).startswith(b"SSH-"):
                return True
        time.sleep(0.02)
    return False


def start_sshd(
    tmp: Path,
    aliases: Sequence[str] = ("dev-a",),
    *,
    log_level: str = "ERROR",
    timeout: float = 15.0,
) -> SshServer:
    """Start sshd on a free port of 127.0.0.1 with its files in ``tmp`` (made if missing) and
    write a client config with ``aliases`` for it; returns once the port answers. Skips the
    calling test without OpenSSH. Use it as a context manager, or call ``stop()``."""
    require_openssh()
    if isinstance(aliases, str):
        aliases = [aliases]
    tmp.mkdir(parents=True, exist_ok=True)
    keys = tmp / "keys"
    keys.mkdir(exist_ok=True)
    host_key = keys / "host_ed25519"
    host_public_key = _keygen(host_key, "mmedge-test-host")
    client_key = keys / "client_ed25519"
    (tmp / "authorized_keys").write_text(_keygen(client_key, "mmedge-test-client") + "\n")
    bad_key = keys / "rejected_ed25519"
    _keygen(bad_key, "mmedge-test-rejected")
    if os.geteuid() == 0:
        # sshd as root checks its privilege-separation directory (Debian's is /run/sshd, made
        # by the service unit, which a container or CI runner never starts).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = tmp / "sshd.log"
    config = tmp / "sshd_config"
    errors = []
    for _attempt in range(5):  # another process can take the free port before sshd binds it
        port = _free_port()
        config.write_text(_sshd_config(tmp, port, host_key, log_level))
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=clean_env(),
            )
        if _wait_for_banner(process, port, time.monotonic() + timeout):
            server = SshServer(
                tmp,
                port=port,
                process=process,
                log=log,
                host_public_key=host_public_key,
                client_key=client_key,
                bad_key=bad_key,
            )
            atexit.register(server.stop)  # a test that forgets stop() leaves no daemon behind
            for alias in aliases:
                server.add_alias(alias)
            return server
        if process.poll() is None:
            process.kill()
        process.wait()
        errors.append(log.read_text(errors="replace")[-2000:])
        if "Address already in use" not in errors[-1]:
            break
    raise RuntimeError(f"sshd did not start on {HOST}; its log:\n{errors[-1]}")


# --- the device side: a venv installed offline, as on an edge box ------------------------------


def build_mmedge_wheel(out_dir: Path) -> Path:
    """mmedge's wheel, built from a copy of the checkout's sources, offline (setuptools from
    the dev venv). A copy, not the checkout: setuptools' build/ keeps modules since deleted."""
    src = out_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "mmedge", src / "mmedge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    wheels = out_dir / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--wheel-dir", str(wheels), str(src)),
        ],
        check=True,
        capture_output=True,
        env=_offline_pip_env(),
    )
    (wheel,) = wheels.glob("mmedge-*.whl")
    return wheel


def make_device_venv(dest: Path, extras: str = "onnxruntime") -> Path:
    """A fresh venv at ``dest`` with ``mmedge[extras]`` installed offline from the wheelhouse
    and a wheel of the checkout (no torch): the python a device runs. Returns its python.
    Skips the calling test where scripts/setup.sh has not built the wheelhouse."""
    if not (WHEELHOUSE / ".stamp").is_file():
        pytest.skip(f"no wheelhouse at {WHEELHOUSE}: run scripts/setup.sh")
    wheel = build_mmedge_wheel(dest.with_name(dest.name + "-build"))
    # The base interpreter of the dev venv: the wheelhouse holds wheels for its version.
    subprocess.run([sys.executable, "-m", "venv", str(dest)], check=True, capture_output=True)
    python = dest / "bin" / "python"
    subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "--quiet", "--no-index"),
            *("--find-links", str(WHEELHOUSE), "--find-links", str(wheel.parent)),
            *("--constraint", str(WHEELHOUSE / "constraints.txt"), f"mmedge[{extras}]"),
        ],
        check=True,
        capture_output=True,
        env=_offline_pip_env(),
    )
    return python


def _offline_pip_env() -> dict[str, str]:
    """pip with no configuration but the command line: no extra index or find-links from a
    pip.conf or PIP_* variable may stand in for a wheel the wheelhouse lacks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env
