"""The Ray cluster a sweep runs on: started here by default, joined with ``--address``.

Every node is checked before the first trial: it must run this mmedge (same version and
artifact format) and see the sweep's files at the same paths (the cache, the recipe's model
and data): workers read and publish through the file system, as on one machine or a cluster
with a shared one (NFS and the like). A node that cannot is named, with what it lacks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedge import ARTIFACT_FORMAT, __version__
from mmedge.errors import ClusterError, DependencyMissing

INSTALL_HINT = "pip install 'mmedge[sweep]' (Ray and Optuna)"
OBJECT_STORE_BYTES = 128 * 2**20  # tasks exchange small records; artifacts go through files


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DependencyMissing(
            "mmedge sweep runs its trials on Ray, which is not installed", hint=INSTALL_HINT
        ) from None
    return ray


@dataclass
class Cluster:
    address: str | None  # None: started here for this sweep, stopped with it
    nodes: list[dict[str, Any]]

    @property
    def cpus(self) -> float:
        return sum(float(n["resources"].get("CPU", 0)) for n in self.nodes)

    def describe(self) -> dict[str, Any]:
        return {"address": self.address or "local (started for this sweep)", "nodes": self.nodes}


def start(address: str | None, workers: int | None) -> Cluster:
    """``ray.init``: a local cluster of ``workers`` CPUs (default: all), or join ``address``."""
    ray = import_ray()
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address is None:
            # "local": a new cluster even where one runs already (ray.init() would join it).
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1,
                     object_store_memory=OBJECT_STORE_BYTES, **quiet)  # fmt: skip
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [repr(err)])[0]
        raise ClusterError(
            f"could not join the Ray cluster at {address!r}: {first}",
            hint="start it with `ray start --head` and pass the address it prints (host:port), "
            "or leave --address out to start one here; a cluster with token authentication "
            "(Ray's default) also needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token)",
        ) from None
    nodes = [
        {"id": n["NodeID"], "host": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
         "resources": n.get("Resources", {})}
        for n in ray.nodes() if n.get("Alive")
    ]  # fmt: skip
    return Cluster(address, nodes)


def stop() -> None:
    """Disconnect (and stop a cluster this sweep started); never fails the sweep."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # a shutdown error must not hide the sweep's result
        pass


def node_check(paths: list[str]) -> dict[str, Any]:
    """Runs on each node: what it has (mmedge, format, CPU) and which paths it cannot see."""
    import socket

    from mmedge.hardware import cpu_summary

    return {
        "host": socket.gethostname(),
        "mmedge": __version__,
        "format": ARTIFACT_FORMAT,
        "cpu": cpu_summary(),
        "missing": [p for p in paths if not Path(p).exists()],
    }


def check_nodes(cluster: Cluster, paths: list[Path]) -> None:
    """Every node runs this mmedge and sees ``paths``; its CPU is kept for the record."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(node_check)
    refs = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False)
        ).remote([str(p) for p in paths])
        for n in cluster.nodes
    ]
    try:
        found = ray.get(refs, timeout=300)
    except Exception as err:  # ModuleNotFoundError in a node without mmedge, a lost node
        raise ClusterError(
            f"a node of the Ray cluster could not run mmedge: {str(err).strip().splitlines()[-1]}",
            hint="install this mmedge on every node (pip install 'mmedge[all,sweep]')",
        ) from None
    for node, got in zip(cluster.nodes, found, strict=True):
        node["check"] = got
        if (got["mmedge"], got["format"]) != (__version__, ARTIFACT_FORMAT):
            raise ClusterError(
                f"node {got['host']} runs mmedge {got['mmedge']} ({got['format']}); this is "
                f"{__version__} ({ARTIFACT_FORMAT})",
                hint="install the same mmedge on every node",
            )
        if got["missing"]:
            raise ClusterError(
                f"node {got['host']} cannot see {got['missing'][0]}"
                + (f" (and {len(got['missing']) - 1} more)" if len(got["missing"]) > 1 else ""),
                hint="a sweep's workers read the recipe's files and write the cache at the same "
                "paths as here: put them on a file system every node mounts, or use one machine",
            )


def check_fits(cluster: Cluster, cpus: float, memory_gb: float) -> bool:
    """A task no node can hold would wait forever: refuse it now. True when a node can hold
    it with a GPU too (a prune that distils on CUDA asks for one)."""

    def holds(n: dict[str, Any]) -> bool:
        res = n["resources"]
        return float(res.get("CPU", 0)) >= cpus and float(res.get("memory", 0)) >= memory_gb * 2**30

    fits = [n for n in cluster.nodes if holds(n)]
    if not fits:
        largest = max(
            cluster.nodes, key=lambda n: float(n["resources"].get("CPU", 0)), default=None
        )
        have = (
            f"{largest['resources'].get('CPU', 0):g} CPUs, "
            f"{float(largest['resources'].get('memory', 0)) / 2**30:.1f} GB"
            if largest
            else "no nodes"
        )
        raise ClusterError(
            f"no node of the cluster has {cpus:g} CPUs and {memory_gb:g} GB for a task "
            f"(sweep.resources); the largest has {have}",
            hint="lower sweep.resources.cpus / memory_gb, or add a larger node",
        )
    return any(float(n["resources"].get("GPU", 0)) >= 1 for n in fits)
