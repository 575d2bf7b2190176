"""The `maestro` command itself: help text and `doctor`."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def maestro(*args: str, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maestro", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def test_help_explains_each_command():
    top = maestro("--help")
    assert top.returncode == 0
    for command in ("run", "submit", "doctor"):
        assert command in top.stdout
    run = maestro("run", "--help")
    assert "--preset" in run.stdout and "--set" in run.stdout and "resumes" in run.stdout
    submit = maestro("submit", "--help")
    assert "--address" in submit.stdout and "RAY_AUTH_MODE=token" in submit.stdout


def test_doctor_reports_installed_and_reachable_parts(workdir, s3_env, mlflow_server):
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    env["MAESTRO_STORE"] = f"s3://{s3_env.bucket}/doctor"
    done = maestro("doctor", env=env, cwd=workdir)
    assert done.returncode == 0, done.stdout
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip()}
    assert lines["ray"].startswith("ok ")
    assert lines["mlflow"].startswith("ok ") and mlflow_server.url in lines["mlflow"]
    assert lines["store"].startswith("ok ") and f"s3://{s3_env.bucket}/doctor" in lines["store"]
    assert "2.60.0" in done.stdout

    broken = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    broken["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    broken["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    bad = maestro("doctor", env=broken, cwd=workdir)
    assert bad.returncode == 1
    assert any(line.startswith("BAD mlflow") for line in bad.stdout.splitlines())


def test_a_changed_spec_under_a_fixed_run_name_is_refused_and_new_run_starts_afresh(workdir):
    lqg = str(REPO / "jobs" / "randomist" / "lqg.yaml")
    tiny = ["--set", "tracking.run_name=fixed", "--set", "trials.seeds=1"]
    tiny += [
        "--set",
        "trials.arms={randomist: {algorithm: randomist}, ucb1: {algorithm: ucb1}}",
        "--set",
        "claims=[]",
    ]
    first = maestro("run", lqg, *tiny, "--set", "config.rounds=100", cwd=workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    run_folder = workdir / "maestro-store" / "runs" / "randomist"
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    database = (workdir / "mlruns.db").read_bytes()

    changed = maestro("run", lqg, *tiny, "--set", "config.rounds=120", cwd=workdir)
    assert changed.returncode == 2
    (line,) = changed.stderr.strip().splitlines()
    assert "config.rounds (100 -> 120)" in line and "--new-run" in line
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    assert (workdir / "mlruns.db").read_bytes() == database  # nothing written

    fresh = maestro("run", lqg, *tiny, "--set", "config.rounds=120", "--new-run", cwd=workdir)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "run fixed-2: finished" in fresh.stdout
    assert sorted(p.name for p in run_folder.iterdir()) == ["fixed", "fixed-2"]
    again = maestro("run", lqg, *tiny, "--set", "config.rounds=100", cwd=workdir)
    assert "run fixed: already finished" in again.stdout
