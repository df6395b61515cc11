"""A multi-node Ray cluster on this machine, made the way a user makes one: `ray start --head` and `ray start
--address` from the project's virtualenv (so submitted jobs run with its Python), with token authentication on:
every node and client reads the token from a file (`RAY_AUTH_TOKEN_PATH`) that the test writes in its own tmp dir.

Each node is a `ray start --block` process in a session of its own, so a node is killed, or the cluster stopped, by
signalling process groups; nothing here runs `ray stop`. Every process of the cluster, down to the workers that
the raylets spawn in groups of their own, inherits a marker variable for the cluster and one for its node, which is
how a killed node takes all its processes with it and how `kill_leftovers` finds any that survived.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

from tests.conftest import REPO, free_port

VENV_BIN = Path(sys.executable).parent  # the virtualenv running the tests: the cluster's `ray` and `python`
MARKER = "BIOMEDCLIP_TEST_CLUSTER"
NODE_MARKER = "BIOMEDCLIP_TEST_NODE"
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # set per process below, never inherited
NODE_TAG = "test_node_"  # prefix of the custom resource that names a worker node


class NodeStartError(RuntimeError):
    pass


@dataclass
class LocalCluster:
    temp_dir: Path  # short: Ray's socket paths live under it
    token_file: Path  # the cluster's token; written by `local_cluster`
    gcs_port: int = 0  # chosen by start_head
    dashboard_port: int = 0
    marker: str = field(default_factory=lambda: secrets.token_hex(8))
    nodes: list[subprocess.Popen] = field(default_factory=list)
    node_dirs: dict[int, Path] = field(default_factory=dict)  # `ray start` pid -> the node's --temp-dir
    named_nodes: dict[str, subprocess.Popen] = field(default_factory=dict)  # see `add_node`
    cwd: Path = REPO  # where `ray start` runs (the directory Ray's workers start in)
    env: dict[str, str] = field(default_factory=dict)  # set on every node, e.g. what a start command exports

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self, node_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR", *AUTH_VARIABLES)}
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.token_file), OMP_NUM_THREADS="1",
                   # Ray's state API, which Train's placement-group cleaner calls without an address, would find
                   # several Ray instances on this machine (the tests' own one too) and give up.
                   RAY_API_SERVER_ADDRESS=self.dashboard_url,
                   **{MARKER: self.marker, NODE_MARKER: self._node_marker(node_dir)})
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"  # tests/conftest.py sets 0, which forbids a second node
        return {**env, **self.env}

    def client_env(self, token: str | None = "own") -> dict[str, str]:
        """Environment of a client: with this cluster's token, another token, or (None) no authentication."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", MARKER, *AUTH_VARIABLES)}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        if token is None:
            env["RAY_AUTH_MODE"] = "disabled"
        elif token == "own":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        else:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        return env

    def _node_marker(self, node_dir: Path) -> str:
        return f"{self.marker}:{node_dir.name}"

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
            node = subprocess.Popen(command, env=self.node_env(node_dir), cwd=self.cwd, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(node)
        self.node_dirs[node.pid] = node_dir
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

    def start_head(self, num_cpus: int = 2) -> subprocess.Popen:
        def args() -> list[str]:
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            return ["--head", f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]

        return self._start_until_alive(args, "head.log", num_cpus, None)

    def add_node(self, num_cpus: int = 2, name: str | None = None) -> subprocess.Popen:
        """Starts one more node on this machine and waits until it has joined. A named node carries the custom
        resource `NODE_TAG<name>`, which is how `node_names` tells the nodes apart, and is in `named_nodes`."""
        log_name = f"node{len(self.nodes)}.log"
        resources = {f"{NODE_TAG}{name}": 1} if name else None
        node = self._start_until_alive(lambda: [f"--address=127.0.0.1:{self.gcs_port}"], log_name, num_cpus,
                                       resources)
        if name:
            self.named_nodes[name] = node
        return node

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

    def submit_command(self, entrypoint: list[str], *extra_args: str) -> list[str]:
        """`ray job submit --working-dir .`, to run from the repository root; it waits for the job and streams
        its logs."""
        return [str(VENV_BIN / "ray"), "job", "submit", "--address", self.dashboard_url, "--working-dir", ".",
                *extra_args, "--", *entrypoint]

    def submit(self, entrypoint: list[str], token: str | None = "own",
               timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.submit_command(entrypoint), env=self.client_env(token), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def submit_in_background(self, entrypoint: list[str], submission_id: str, output: Path) -> subprocess.Popen:
        """The same submit, left running (its streamed output goes to `output`) while the test acts on the job."""
        with open(output, "w") as out:
            return subprocess.Popen(self.submit_command(entrypoint, "--submission-id", submission_id),
                                    env=self.client_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def job(self, submission_id: str) -> dict:
        status, body = self.get(f"/api/jobs/{submission_id}")
        assert status == 200, body
        return body

    def job_status(self, submission_id: str) -> str | None:
        """The job's status; None while no job of that id exists (its submitter may still be uploading)."""
        status, body = self.get(f"/api/jobs/{submission_id}")
        if status == 404:
            return None
        assert status == 200, body
        return body["status"]

    def job_logs(self, submission_id: str) -> str:
        status, body = self.get(f"/api/jobs/{submission_id}/logs")
        assert status == 200, body
        return body["logs"]

    def node_names(self) -> dict[str, str]:
        """Alive node id -> the name it was added with (see `add_node`), or "head"."""
        return {node["node_id"]: next((r.removeprefix(NODE_TAG) for r in node["resources_total"]
                                       if r.startswith(NODE_TAG)), "head")
                for node in self.alive_nodes()}

    def actors(self, class_name: str) -> list[dict]:
        """Actors of `class_name`, alive or dead, from the state API."""
        status, body = self.get(f"/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D"
                                f"&filter_values={class_name}")
        assert status == 200, body
        return body["data"]["result"]["result"]

    def kill_node(self, node: subprocess.Popen) -> None:
        """An abrupt node failure: SIGKILL to the node's `ray start`, everything in its process group and every
        process started on that node (the workers the raylet spawned in groups of their own)."""
        os.killpg(node.pid, signal.SIGKILL)
        for pid in _processes_with_env(NODE_MARKER, self._node_marker(self.node_dirs[node.pid])):
            _kill_quietly(int(pid))
        node.wait()
        self.nodes.remove(node)
        self.named_nodes = {name: n for name, n in self.named_nodes.items() if n is not node}

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
def local_cluster(name: str, secrets_dir: Path) -> Iterator[LocalCluster]:
    """A cluster whose session files live in .ray_tmp/<name><n> and whose token is a new file in `secrets_dir`;
    stopped on exit, which must leave no process."""
    temp_dir = REPO / ".ray_tmp" / f"{name}{time.time_ns() % 10**6}"
    token_file = secrets_dir / "ray_auth_token"
    token_file.touch(mode=0o600)
    token_file.write_text(generate_new_authentication_token())
    cluster = LocalCluster(temp_dir, token_file)
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
    """The zip that `ray job submit --working-dir` uploads for `directory`: the same function, with .gitignore and
    Ray's default excludes (.git, .venv, __pycache__), as the job SDK applies them."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    package = into / "working_dir.zip"
    create_package(str(directory), package, include_gitignore=True, excludes=get_runtime_env_default_excludes())
    return package


def submitted(result: subprocess.CompletedProcess) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    return output
