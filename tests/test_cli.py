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
