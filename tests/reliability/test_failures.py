"""Failures a user can cause or meet, each done for real (a bad spec, a store endpoint that
accepts and never answers, an MLflow server that is not there, a run killed between
creating its MLflow run and recording it): one line on stderr naming what failed, the
right exit code, a bounded time, nothing half-made, and a rerun that duplicates nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ..conftest import REPO, free_port, start_mlflow_server, stop, wait_http

LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")
TINY = [
    "--set=config.rounds=100",
    "--set=config.log_every=50",
    "--set=config.value_samples=500",
    "--set=trials.seeds=1",
    "--set=trials.arms={ucb1: {algorithm: ucb1}, gpucb: {algorithm: gpucb}}",
    "--set=claims=[]",
    "--set=resources.num_cpus=2",
]


def maestro(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "maestro", *args],
        cwd=workdir,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - started


def one_line_error(done: subprocess.CompletedProcess, starts: str) -> str:
    """The failure's line: the last on stderr, without a traceback anywhere."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(starts), done.stderr[-3000:]
    return last


def bad_spec_file(workdir: Path, kind: str) -> str:
    """A folder, or a file that is not UTF-8, given as the spec."""
    if kind == "folder":
        return str(workdir)
    path = workdir / "binary.yaml"
    path.write_bytes(b"method: \xff\xfe")
    return str(path)


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [
        ("folder", [], "a folder, not a spec file"),
        ("binary", [], "not UTF-8"),
        (LQG, ["--set=config.sigma=.inf"], "config.sigma: must be a finite number"),
        (LQG, ["--set=store.uri=ftp://host/x"], "store.uri"),
        (LQG, ["--set=tracking.run_name=../.."], "tracking.run_name"),
        (LQG, ["--set=config.log_every=500"], "log_every (500) must not exceed rounds (100)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, spec, override, message):
    if spec in ("folder", "binary"):
        spec = bad_spec_file(workdir, spec)
    done, _ = maestro(workdir, "run", spec, *TINY, *override)
    assert done.returncode == 2
    assert message in one_line_error(done, "maestro: spec error: ")
    assert not (workdir / "maestro-store").exists() and not (workdir / "mlruns.db").exists()


def silent_server() -> tuple[int, threading.Event]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    held = []

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
        for connection in held:
            connection.close()
        listener.close()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], stop


def test_a_stalled_store_fails_the_run_within_its_deadline(workdir):
    port, stop = silent_server()
    env = {
        "MAESTRO_STORE": "s3://bucket/prefix",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MAESTRO_S3_TIMEOUT_S": "1",
        "AWS_MAX_ATTEMPTS": "2",
    }
    try:
        done, seconds = maestro(workdir, "run", LQG, *TINY, env=env, timeout=120)
    finally:
        stop.set()
    assert done.returncode == 1
    line = one_line_error(done, "maestro: run: store: ")
    assert "s3://bucket/prefix/runs/randomist/" in line and "secret" not in done.stderr
    assert seconds < 30  # two attempts of a 1 s read timeout, and Python's start


def test_an_absent_mlflow_server_fails_fast_before_anything_is_written(workdir):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "MLFLOW_TRACKING_URI": f"http://user:hunter2@127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    }
    done, seconds = maestro(workdir, "run", LQG, *TINY, env=env, timeout=300)
    assert done.returncode == 1
    line = one_line_error(done, "maestro: run: MLflow: ")
    assert "hunter2" not in done.stdout + done.stderr
    assert seconds < 120
    # Refused before the experiment's identity was written: nothing to resume.
    assert not list((workdir / "maestro-store").rglob("run.json")), line


def test_a_run_killed_before_recording_its_mlflow_run_is_resumed_into_it(workdir):
    done, _ = maestro(workdir, "run", LQG, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    (state_file,) = (workdir / "maestro-store").rglob("run.json")
    state = json.loads(state_file.read_text())
    run_id = state["mlflow_run_id"]
    # As if killed after its MLflow run was created (and had all its metrics) but before
    # run.json recorded the run or the end.
    state_file.write_text(json.dumps({**state, "mlflow_run_id": None, "status": "RUNNING"}))
    again, _ = maestro(workdir, "run", LQG, *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(state_file.read_text())["mlflow_run_id"] == run_id
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("randomist").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`maestro.kind` = 'run'")
    assert parent.info.run_id == run_id and parent.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "regret/ucb1")]
    assert sorted(steps) == [50, 100]  # logged by both attempts, stored once


def test_mlflow_going_away_mid_run_fails_it_in_bounded_time_and_the_rerun_resumes(workdir):
    folder = workdir / "mlflow-server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(folder, port, dict(os.environ))
    wait_http(f"{url}/health", timeout=120, process=server)
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    # 2 arms x 4 seeds: trials still in flight when the server goes, half as many to rerun.
    longer = [*TINY, "--set=config.rounds=6000", "--set=trials.seeds=4"]
    command = [sys.executable, "-m", "maestro", "run", LQG, *longer]
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        state_files: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:  # wait for its MLflow run
            state_files = list((workdir / "maestro-store").rglob("run.json"))
            if state_files and json.loads(state_files[0].read_text()).get("mlflow_run_id"):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before MLflow could go away"
        time.sleep(2)  # trials running
        stop(server)
        gone = time.monotonic()
        _, stderr = process.communicate(timeout=300)
        seconds = time.monotonic() - gone
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "MLflow" in stderr.strip().splitlines()[-1]
    assert seconds < 150  # MLflow's deadline here: 20 s a request, one retry
    state = json.loads(state_files[0].read_text())
    assert state["status"] == "FAILED"

    # MLflow back: the same command finishes the same run.
    server = start_mlflow_server(folder, port, dict(os.environ))
    try:
        wait_http(f"{url}/health", timeout=120, process=server)
        again = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("randomist").experiment_id
        (parent,) = client.search_runs([experiment], "tags.`maestro.kind` = 'run'")
        assert parent.info.run_id == state["mlflow_run_id"]
        assert parent.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(parent.info.run_id, "regret/ucb1")]
        assert sorted(steps) == list(range(50, 6001, 50))
    finally:
        stop(server)
