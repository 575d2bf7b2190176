"""`maestro submit` against a real head node started with `ray start --head` and token
authentication on: the job runs, its logs stream back, its exit status comes back, and a
wrong token is refused."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, cpu_load, free_port, wait_http

LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")


@contextlib.contextmanager
def token_cluster_at(home: Path) -> Iterator[tuple[str, str, dict]]:
    """A one-node Ray cluster with RAY_AUTH_MODE=token, up once its GCS answers (its job agent
    may come later); yields (dashboard URL, token, env)."""
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "HOME": str(home),  # keeps the test away from ~/.ray
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    # --block keeps the head in one process group that the test alone stops (`ray stop`
    # would stop every Ray cluster on the machine).
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            # Ports of their own, so that another cluster on this machine cannot hold them
            # (an agent that cannot bind its port never takes jobs).
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_http(f"{address}/api/gcs_healthz", timeout=180, process=head)
        yield address, token, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


# A no-op job submitted through `maestro submit`'s waiting call, followed to its end.
NO_OP_JOB = """
import sys, time
from ray.job_submission import JobSubmissionClient
from maestro.cli import submit_when_agent_ready
client = JobSubmissionClient(sys.argv[1])
job_id = submit_when_agent_ready(client, entrypoint="true")
while not client.get_job_status(job_id).is_terminal():
    time.sleep(0.5)
print(client.get_job_status(job_id).value)
"""


def wait_for_job_agent(address: str, env: dict) -> None:
    """Wait for the head's job agent as `maestro submit` does (in a process of its own, as
    Ray reads the auth settings once per process)."""
    done = subprocess.run(
        [sys.executable, "-c", NO_OP_JOB, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip().endswith("SUCCEEDED"), done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A token-auth cluster whose job agent is ready; yields (dashboard URL, token, env)."""
    with token_cluster_at(tmp_path_factory.mktemp("ray-home")) as (address, token, env):
        wait_for_job_agent(address, env)
        yield address, token, env


def submit(env: dict, address: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maestro", "submit", LQG, "--address", address, *extra],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_submitted_job_runs_streams_logs_and_returns_its_status(token_cluster, tmp_path):
    address, _, env = token_cluster
    store = tmp_path / "store"
    env = {
        **env,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db",
        "MAESTRO_STORE": str(store),
    }
    done = submit(
        env,
        address,
        "--preset",
        "smoke",
        "--set",
        "config.rounds=300",
        "--set",
        "trials.seeds=2",
        "--set",
        "trials.arms={randomist: {algorithm: randomist}, ucb1: {algorithm: ucb1}}",
        "--set",
        "claims=[]",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "submitted job" in out
    assert "run lqg-smoke-" in out  # the job's own progress, streamed back
    assert "final_regret/ucb1" in out
    assert "SUCCEEDED" in out
    (state_file,) = store.glob("runs/randomist/*/run.json")
    state = json.loads(state_file.read_text())
    assert state["status"] == "FINISHED"
    assert state["spec"]["config"]["rounds"] == 300
    assert env["RAY_AUTH_TOKEN"] not in out + done.stderr


def test_submit_to_a_just_started_cluster_on_a_loaded_machine_waits_for_the_job_agent(
    tmp_path,
):
    # Both cores busy while the head starts and the job is submitted straight after its GCS
    # answers: the job agent comes up late, and `maestro submit` waits for it.
    with cpu_load(2), token_cluster_at(tmp_path / "home") as (address, _, env):
        env = {**env, "MAESTRO_STORE": str(tmp_path / "store")}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlruns.db"
        done = submit(env, address, "--set", "config.rounds=50", "--set", "trials.seeds=1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SUCCEEDED" in done.stdout
    assert "No available agent" not in done.stdout + done.stderr


def test_failing_job_returns_nonzero(token_cluster):
    address, _, env = token_cluster
    # Valid here, fails there: the store folder is only made by the job, and /proc takes
    # no folders.
    done = submit(env, address, "--set", "store.uri=/proc/nowhere", "--set", "config.rounds=50")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "maestro: run: " in done.stdout and "/proc/nowhere" in done.stdout
    assert "FAILED" in done.stdout


def test_wrong_token_is_refused(token_cluster):
    address, _, env = token_cluster
    bad = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    done = submit(bad, address, "--set", "config.rounds=50")
    assert done.returncode == 2
    assert "refused" in done.stderr and "Invalid authentication token" in done.stderr
    assert bad["RAY_AUTH_TOKEN"] not in done.stderr + done.stdout


def test_missing_token_is_refused(token_cluster):
    address, _, env = token_cluster
    bare = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    bare["HOME"] = str(Path(env["HOME"]) / "empty")
    done = submit(bare, address, "--set", "config.rounds=50")
    assert done.returncode == 2
    assert "refused" in done.stderr or "no token" in done.stderr
