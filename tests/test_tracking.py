"""End to end through real servers: `maestro run` of the RANDOMIST smoke spec against an
MLflow server process (artifacts on S3) with the Maestro store on S3, read back through the
MLflow client and boto3; then a run killed mid-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from .conftest import REPO, S3_SECRET

LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")


def maestro_env(s3_server, mlflow_server, store_prefix: str) -> dict[str, str]:
    env = {**os.environ, **s3_server.env()}
    env["MLFLOW_TRACKING_URI"] = mlflow_server.url
    env["MAESTRO_STORE"] = f"s3://{s3_server.bucket}/{store_prefix}"
    env.pop("RAY_ADDRESS", None)
    return env


def maestro_command(*options: str) -> list[str]:
    """`maestro run` of the RANDOMIST LQG spec's smoke preset."""
    return [sys.executable, "-m", "maestro", "run", LQG, "--preset", "smoke", *options]


def maestro_run(env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    """`maestro_command` in a subprocess, its output captured."""
    return subprocess.run(
        maestro_command(*options), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )


def run_state(s3_server, store_prefix: str) -> dict:
    client = s3_server.client()
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=store_prefix).get(
            "Contents", []
        )
        if o["Key"].endswith("run.json")
    ]
    assert len(keys) == 1, keys
    return json.loads(client.get_object(Bucket=s3_server.bucket, Key=keys[0])["Body"].read())


def test_smoke_run_logs_everything_and_shows_the_papers_ordering(
    s3_server, mlflow_server, tmp_path
):
    env = maestro_env(s3_server, mlflow_server, "smoke-store")
    done = maestro_run(env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "randomist runs: 100%" in done.stderr  # progress with throughput was shown
    state = run_state(s3_server, "smoke-store")
    assert state["status"] == "FINISHED"

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method"] == "randomist"
    assert params["config.rounds"] == "2000"
    assert params["config.num_seeds"] == "10"
    assert params["config.lqg.horizon"] == "10"
    tags = run.data.tags
    assert tags["maestro.method"] == "randomist"
    assert tags["maestro.preset"] == "smoke"
    assert tags["mlflow.source.git.commit"]
    assert tags["maestro.version.ray"] == "2.60.0"
    assert tags["maestro.store"].startswith(f"s3://{s3_server.bucket}/smoke-store/runs/")

    # Curves with a real step (the round), 2000 / 50 = 40 points per algorithm.
    history = client.get_metric_history(run.info.run_id, "regret/ucb1")
    assert [m.step for m in sorted(history, key=lambda m: m.step)][:3] == [50, 100, 150]
    assert len(history) == 40
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("summary/final_regret/")}
    ucb1 = final["summary/final_regret/ucb1"]
    # The paper's ordering: mediator feedback beats bandit feedback by a wide margin.
    assert final["summary/final_regret/randomist"] < 0.7 * ucb1
    assert final["summary/final_regret/optimist"] < 0.7 * ucb1
    assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(ucb1)

    # Artifacts went through the server into the S3 bucket.
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "spec.yaml"} <= artifacts
    objects = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="mlflow/")
    keys = [o["Key"] for o in objects.get("Contents", [])]
    png = [
        k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/plots/cumulative_regret.png")
    ]
    assert png, keys
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=png[0])["Body"].read()
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 10_000

    # No secret reached params, tags, the spec artifact or the output.
    spec_text = client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path))
    everything = " ".join(
        [*params.values(), *tags.values(), Path(spec_text).read_text(), done.stdout, done.stderr]
    )
    assert S3_SECRET not in everything

    # Running the finished spec again reports it and changes nothing.
    again = maestro_run(env)
    assert again.returncode == 0
    assert "already finished" in again.stdout
    assert len(client.get_metric_history(run.info.run_id, "regret/ucb1")) == 40


def test_killed_run_resumes_into_the_same_mlflow_run(s3_server, mlflow_server):
    env = maestro_env(s3_server, mlflow_server, "resume-store")
    options = ["--set", "seed=100", "--set", "config.num_seeds=4", "--set", "config.rounds=3000"]
    process = subprocess.Popen(
        maestro_command(*options),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = s3_server.client()

    def curves() -> dict[str, object]:
        listing = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="resume-store/")
        return {
            o["Key"]: o["LastModified"]
            for o in listing.get("Contents", [])
            if "/curves/" in o["Key"]
        }

    deadline = time.monotonic() + 300
    while len(curves()) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = curves()
    assert 3 <= len(before) < 20
    killed = run_state(s3_server, "resume-store")
    assert killed["status"] == "RUNNING"  # killed: nothing got to mark it

    done = maestro_run(env, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    after = curves()
    assert len(after) == 20
    for key, modified in before.items():  # finished work was not redone
        assert after[key] == modified
    state = run_state(s3_server, "resume-store")
    assert state["status"] == "FINISHED"
    assert state["mlflow_run_id"] == killed["mlflow_run_id"]

    mlflow = MlflowClient(mlflow_server.url)
    runs = mlflow.search_runs(
        [mlflow.get_experiment_by_name("randomist").experiment_id],
        filter_string=f"tags.mlflow.runName = '{state['run_name']}'",
    )
    assert len(runs) == 1  # resumed, not duplicated
    assert runs[0].info.status == "FINISHED"
    assert len(mlflow.get_metric_history(runs[0].info.run_id, "regret/randomist")) == 60
