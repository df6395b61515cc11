"""A multi-node Ray cluster on this machine, made the way a user makes one: `ray start --head` and `ray start
--address` from the project's virtualenv (so submitted jobs run with its Python), with token authentication on.

Each node is a `ray start --block` process in a session of its own, so a node is killed, or the cluster stopped, by
signalling process groups; nothing here runs `ray stop`. Every process of the cluster, down to the workers that
the raylets spawn in groups of their own, inherits a marker variable, which is how `leftover_processes` finds any
that survived.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.conftest import REPO, free_port

VENV_BIN = Path(sys.executable).parent  # the virtualenv running the tests: the cluster's `ray` and `python`
MARKER = "BIOMEDCLIP_TEST_CLUSTER"
NODE_TAG = "test_node_"  # prefix of the custom resource that names a worker node


class NodeStartError(RuntimeError):
    pass


@dataclass
class LocalCluster:
    temp_dir: Path  # short: Ray's socket paths live under it
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    gcs_port: int = 0  # chosen by start_head
    dashboard_port: int = 0
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN=self.token, OMP_NUM_THREADS="1", **{MARKER: self.marker})
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # tests/conftest.py sets 0, which forbids a second node
        return env

    def client_env(self, token: str | None = "own") -> dict[str, str]:
        """Environment of a client: with this cluster's token, another token, or (None) no authentication."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", MARKER)}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        if token is None:
            env["RAY_AUTH_MODE"] = "disabled"
        else:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token if token == "own" else token)
        return env

    def _start(self, args: list[str], log_name: str, num_cpus: int, resources: dict | None) -> subprocess.Popen:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        node_dir = self.temp_dir / f"n{len(self.nodes)}"  # per node: each log monitor forwards its own logs once
        command = [str(VENV_BIN / "ray"), "start", *args, "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                   f"--temp-dir={node_dir}", "--disable-usage-stats", "--block",
                   # Free ports rather than Ray's fixed defaults (52365, 10001), which another Ray on this machine
                   # may hold; the raylet then also need not wait for the agents to report them.
                   f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        if resources:
            command.append(f"--resources={json.dumps(resources)}")
        with open(self.temp_dir / log_name, "a") as log:
            node = subprocess.Popen(command, env=self.node_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.nodes.append(node)
        return node

    def _start_until_alive(self, args, log_name: str, num_cpus: int, resources: dict | None,
                           attempts: int = 3) -> subprocess.Popen:
        """Starts a node and waits for it to join. A raylet aborts when its dashboard agent has not opened its
        HTTP port within 15 s (fixed in Ray 2.60), which a loaded machine can miss: then the node's process group
        is killed and the start retried."""
        expected = len(self.alive_nodes()) + 1
        for attempt in range(1, attempts + 1):
            node = self._start(args(), log_name, num_cpus, resources)
            try:
                self.wait_for_nodes(expected)
                return node
            except NodeStartError:
                _kill_group_quietly(node.pid)
                node.wait()
                self.nodes.remove(node)
                if attempt == attempts:
                    raise

    def start_head(self, num_cpus: int = 2, resources: dict | None = None) -> subprocess.Popen:
        def args() -> list[str]:
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            return ["--head", f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]

        return self._start_until_alive(args, "head.log", num_cpus, resources)

    def add_node(self, num_cpus: int = 2, resources: dict | None = None) -> subprocess.Popen:
        """Starts one more node on this machine and waits until it has joined."""
        name = f"node{len(self.nodes)}.log"
        return self._start_until_alive(lambda: [f"--address=127.0.0.1:{self.gcs_port}"], name, num_cpus, resources)

    def get(self, path: str, token: str | None = "own", method: str = "GET") -> tuple[int, dict | str]:
        """A dashboard API call with this cluster's token (or another, or none)."""
        headers = {"Authorization": f"Bearer {self.token if token == 'own' else token}"} if token else {}
        request = urllib.request.Request(self.dashboard_url + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def alive_nodes(self) -> list[dict]:
        try:
            status, body = self.get("/api/v0/nodes?limit=100")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return []
        if status != 200:
            return []
        return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 300) -> list[dict]:
        """Polls the dashboard until `count` nodes are alive and their agents serve jobs (the job API needs the
        head's agent); fails early when a `ray start` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    raise NodeStartError(f"`ray start` exited with {node.returncode}: {self.logs()}")
            nodes = self.alive_nodes()
            if len(nodes) == count and self.get("/api/jobs/")[0] == 200:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"{count} nodes not alive after {timeout}s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.temp_dir.glob("*.log")))

    def submit(self, entrypoint: list[str], token: str | None = "own", timeout: float = 600,
               extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir .` from the repository root; waits for the job and streams its logs."""
        command = [str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard_url, "--working-dir", ".",
                   *extra_args, "--", *entrypoint]
        return subprocess.run(command, env=self.client_env(token), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def start_job(self, entrypoint: list[str], submission_id: str) -> None:
        """`ray job submit --no-wait`: returns once the job is accepted."""
        result = self.submit(entrypoint, extra_args=("--no-wait", "--submission-id", submission_id), timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr

    def job(self, submission_id: str) -> dict:
        status, body = self.get(f"/api/jobs/{submission_id}")
        assert status == 200, body
        return body

    def job_logs(self, submission_id: str) -> str:
        status, body = self.get(f"/api/jobs/{submission_id}/logs")
        assert status == 200, body
        return body["logs"]

    def wait_for_job(self, submission_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while (job := self.job(submission_id))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            assert time.monotonic() < deadline, f"job still {job['status']} after {timeout}s"
            time.sleep(2)
        return job

    def node_names(self) -> dict[str, str]:
        """Alive node id -> its name: the `NODE_TAG*` resource it was started with, or "head"."""
        return {node["node_id"]: next((r for r in node["resources_total"] if r.startswith(NODE_TAG)), "head")
                for node in self.alive_nodes()}

    def actors(self, class_name: str) -> list[dict]:
        """Actors of `class_name`, alive or dead, from the state API."""
        status, body = self.get(f"/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D"
                                f"&filter_values={class_name}")
        assert status == 200, body
        return body["data"]["result"]["result"]

    def kill_node(self, node: subprocess.Popen) -> None:
        """An abrupt node failure: SIGKILL to the node's `ray start` and everything in its process group."""
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
        self.nodes.remove(node)

    def stop_jobs(self, timeout: float = 60) -> None:
        """Stops the jobs still running, as `ray job stop` does: a driver lives in a process group of its own."""
        try:
            jobs = self.get("/api/jobs/")[1]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return  # no dashboard, no jobs to ask about
        running = [job["submission_id"] for job in jobs if job["status"] in ("PENDING", "RUNNING")]
        for submission_id in running:
            self.get(f"/api/jobs/{submission_id}/stop", method="POST")
        deadline = time.monotonic() + timeout
        while running and time.monotonic() < deadline:  # a job that will not stop is left to kill_leftovers
            running = [i for i in running if self.job(i)["status"] in ("PENDING", "RUNNING")]
            time.sleep(1)

    def stop(self, grace_s: float = 10) -> None:
        """Stops running jobs, then sends SIGTERM to every node's process group (`ray start --block` then stops its
        processes) and SIGKILL to any group still there after the grace period."""
        if self.nodes:
            self.stop_jobs()
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for node in reversed(self.nodes):
            try:
                node.wait(max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        for node in self.nodes:
            _kill_group_quietly(node.pid)  # children that outlived their `ray start`

    def kill_leftovers(self, wait_s: float = 30) -> list[str]:
        """Processes carrying this cluster's marker (raylets, GCS, workers, job drivers) that are still there
        `wait_s` after the stop (workers leave when they notice their raylet is gone); kills and returns them."""
        deadline = time.monotonic() + wait_s
        while (found := _processes_with_env(MARKER, self.marker)) and time.monotonic() < deadline:
            time.sleep(1)
        for pid in found:
            _kill_quietly(int(pid))
        return [f"{pid}: {command}" for pid, command in found.items()]


@contextmanager
def local_cluster(name: str) -> Iterator[LocalCluster]:
    """A cluster whose session files live in .ray_tmp/<name><n>; stopped on exit, which must leave no process."""
    temp_dir = REPO / ".ray_tmp" / f"{name}{time.time_ns() % 10**6}"
    cluster = LocalCluster(temp_dir)
    try:
        yield cluster
    except BaseException:
        cluster.stop()
        cluster.kill_leftovers()  # the test's own failure is the one to report; its Ray logs stay in temp_dir
        raise
    cluster.stop()
    leftovers = cluster.kill_leftovers()
    assert not leftovers, f"processes outlived the cluster: {leftovers}"
    shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_group_quietly(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _processes_with_env(name: str, value: str) -> dict[str, str]:
    """pid -> command line of the processes whose environment holds name=value (Linux /proc)."""
    needle = f"{name}={value}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:200]
                found[entry.name] = command.decode(errors="replace")
        except OSError:  # exited meanwhile, or not ours to read
            continue
    return found


def working_dir_package(directory: Path, into: Path) -> Path:
    """The zip that `ray job submit --working-dir` uploads for `directory` (same function, same ignore rules)."""
    from ray._private.runtime_env.packaging import create_package

    package = into / "working_dir.zip"
    create_package(str(directory), package, include_gitignore=True)
    return package
