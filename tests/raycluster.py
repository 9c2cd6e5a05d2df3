"""Real Ray clusters for the integration tests, started with `ray start` on loopback.

:class:`SimCluster` simulates a multi-node cluster on one machine: a head with no CPUs (it runs only the drivers'
study tasks, as a real head would) and worker nodes, each in its own mount namespace (``unshare --mount``) with a
tmpfs over the folders that are node-local on a real cluster (the data root, the node-local cache): a path that
exists only on the driver's machine is really absent on a worker node.

Teardown stops only this cluster. ``ray stop`` would stop every Ray cluster on the machine (other test sessions,
other people's runs), so every node is started with a marker environment variable, which every process it spawns
inherits (GCS, raylet, dashboard, agents, workers, job drivers); stopping a node signals exactly the processes
carrying its marker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
MARKER_ENV = "DIA_RAY_TEST_NODE"
HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                   "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
                   "--node-manager-port", "--object-manager-port")
NODE_PORT_FLAGS = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                   "--metrics-export-port", "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def marked_pids(marker: str) -> list[int]:
    """PIDs of the processes whose environment holds ``MARKER_ENV=marker`` (exactly: not a prefix)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # exited meanwhile, or not ours to read
                continue
    return pids


def signal_marked(marker: str, grace_s: float = 5.0, first: int = signal.SIGTERM) -> None:
    """``first`` (SIGTERM) to every process of ``marker``, SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((first, grace_s), (signal.SIGKILL, 5.0)):
        for pid in marked_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not marked_pids(marker):
            return


def wait_for_jobs_api(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                if json.loads(r.read()).get("ray_version"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Jobs API at {url} after {timeout_s:.0f} s")
        time.sleep(0.5)


def namespaces_work() -> str | None:
    """None when ``unshare --mount`` + tmpfs works here, else the reason it does not."""
    if not shutil.which("unshare"):
        return "unshare(1) not installed"
    probe = Path(f"/tmp/dia-ns-probe-{uuid.uuid4().hex[:6]}")
    probe.mkdir()
    (probe / "visible").write_text("x")
    try:
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"mount -t tmpfs none {probe} && test ! -e {probe}/visible"],
                             capture_output=True, text=True, timeout=30)
        return None if out.returncode == 0 else f"unshare --mount/tmpfs not permitted: {out.stderr.strip()[:200]}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def base_env(marker: str) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **{MARKER_ENV: marker},
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "DIA_RAY_ADDRESS"):
        env.pop(name, None)
    return env


@dataclass
class Node:
    name: str
    marker: str
    proc: subprocess.Popen | None = None  # worker nodes run `ray start --block` in the foreground


@dataclass
class SimCluster:
    """A head (``head_cpus`` CPUs, 0 by default) plus worker nodes added with :meth:`add_worker`."""

    head_cpus: int = 0
    hidden: list[Path] = field(default_factory=list)  # folders a worker node must not see (tmpfs over them)
    object_store_bytes: int = 512 * 1024**2
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    nodes: dict[str, Node] = field(default_factory=dict)
    address: str = ""  # GCS address (for --address / ray.init)
    dashboard: str = ""  # Jobs API URL
    node_ids: dict[str, str] = field(default_factory=dict)  # node name -> Ray node id

    @property
    def temp_dir(self) -> Path:
        return Path(f"/tmp/dsc-{self.tag}")  # short: AF_UNIX socket paths must stay < 107 bytes

    def start(self) -> "SimCluster":
        marker = f"{self.tag}-head"
        ports = dict(zip(HEAD_PORT_FLAGS, free_ports(len(HEAD_PORT_FLAGS))))
        cmd = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
               f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())]
        self.nodes["head"] = Node("head", marker)
        started = subprocess.run(cmd, env=base_env(marker), capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed: {started.stderr[-2000:]}")
        self.address = f"127.0.0.1:{ports['--port']}"
        self.dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
        wait_for_jobs_api(self.dashboard)
        self.node_ids["head"] = next(iter(self.alive_node_ids()))
        return self

    def add_worker(self, name: str, *, cpus: int = 1, gpus: int = 0, timeout_s: float = 120.0,
                   env: dict[str, str] | None = None) -> Node:
        """Start worker node ``name`` in its own mount namespace (tmpfs over :attr:`hidden`) and wait until it is
        alive in the cluster."""
        marker = f"{self.tag}-{name}"
        ports = dict(zip(NODE_PORT_FLAGS, free_ports(len(NODE_PORT_FLAGS))))
        ray_cmd = [str(RAY), "start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                   f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--object-store-memory={self.object_store_bytes}",
                   "--disable-usage-stats", "--block", *(f"{flag}={port}" for flag, port in ports.items())]
        script = ('set -e; for d in "$@"; do mkdir -p "$d"; mount -t tmpfs none "$d"; done; '
                  f"exec {' '.join(_quote(a) for a in ray_cmd)}")
        before = self.alive_node_ids()
        # the cluster's temp dir is node-local too: each node keeps its own session folder and logs (sharing them,
        # every node's log monitor would forward every other node's worker logs to the drivers)
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "node",
                                 *map(str, [*self.hidden, self.temp_dir])], env={**base_env(marker), **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        node = Node(name, marker, proc)
        self.nodes[name] = node
        deadline = time.monotonic() + timeout_s
        while not (new := self.alive_node_ids() - before):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill_node(name)
                raise RuntimeError(f"worker node {name} did not join the cluster (exit {proc.poll()})")
            time.sleep(0.5)
        self.node_ids[name] = next(iter(new))
        return node

    def alive_node_ids(self) -> set[str]:
        out = subprocess.run([str(RAY), "list", "nodes", f"--address={self.dashboard}", "--format=json",
                              "--filter", "state=ALIVE"], env=base_env("none"), capture_output=True, text=True,
                             timeout=60)
        try:
            return {n["node_id"] for n in json.loads(out.stdout)}
        except (ValueError, KeyError, TypeError):
            return set()

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of node ``name`` at once (a machine lost, not a clean shutdown)."""
        signal_marked(self.nodes[name].marker, grace_s=0.0, first=signal.SIGKILL)
        proc = self.nodes[name].proc
        if proc is not None:
            proc.wait(10)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"]:
            signal_marked(self.nodes[name].marker, grace_s=2.0)
        if "head" in self.nodes:
            signal_marked(self.nodes["head"].marker)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
