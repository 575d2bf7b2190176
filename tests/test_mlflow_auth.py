"""An MLflow server behind basic authentication, started with `cluster/mlflow/start-server.sh`
(artifacts on the S3 test server): Maestro logs a run with credentials taken from the
environment only, is refused without them, and no secret reaches params, tags, artifacts,
the artifact store or the output."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow.server.auth.client import AuthServiceClient
from mlflow.tracking import MlflowClient

from .conftest import REPO, S3_SECRET, free_port, stop, wait_http

START_SCRIPT = REPO / "cluster" / "mlflow" / "start-server.sh"
LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")
# Every arm of the spec once (one seed): each request costs the server a password check.
SHORT = ["--set", "config.rounds=200", "--set", "trials.seeds=1"]


@dataclass
class AuthServer:
    url: str
    admin_password: str
    user: str
    user_password: str
    secret_key: str
    log: Path

    def secrets(self) -> list[str]:
        return [self.admin_password, self.user_password, self.secret_key, S3_SECRET]

    def admin_client(self, monkeypatch) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", self.admin_password)
        return MlflowClient(self.url)


@pytest.fixture(scope="module")
def auth_server(s3_server, tmp_path_factory) -> Iterator[AuthServer]:
    """The start script's server on a free port; the admin password comes from a file
    (`MLFLOW_AUTH_ADMIN_PASSWORD_FILE`), as on a real host. Admin creates user `maestro`."""
    folder = tmp_path_factory.mktemp("mlflow-auth")
    admin_password = "admin-" + secrets.token_hex(12)
    password_file = folder / "admin_password"
    password_file.write_text(admin_password + "\n")
    port = free_port()
    env = {**os.environ, **s3_server.env()}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    server = AuthServer(
        url=f"http://127.0.0.1:{port}",
        admin_password=admin_password,
        user="maestro",
        user_password="user-" + secrets.token_hex(12),
        secret_key=secrets.token_hex(16),
        log=folder / "server.log",
    )
    env.update(
        {
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{s3_server.bucket}/mlflow-auth",
            "MLFLOW_STATE_DIR": str(folder / "state"),
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(password_file),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": server.secret_key,
        }
    )
    process = subprocess.Popen(
        ["bash", str(START_SCRIPT)], env=env, stdout=server.log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        wait_http(f"{server.url}/health", timeout=300, process=process)
        created = requests.post(
            f"{server.url}/api/2.0/mlflow/users/create",
            json={"username": server.user, "password": server.user_password},
            auth=("admin", admin_password),
            timeout=30,
        )
        assert created.status_code == 200, created.text
        yield server
    finally:
        stop(process)


def maestro(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maestro", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def base_env(s3_server, server: AuthServer, store_prefix: str) -> dict[str, str]:
    env = {**os.environ, **s3_server.env()}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS"):
        env.pop(name, None)
    env["MLFLOW_TRACKING_URI"] = server.url
    env["MAESTRO_STORE"] = f"s3://{s3_server.bucket}/{store_prefix}"
    return env


def test_the_server_refuses_requests_without_credentials(auth_server):
    search = f"{auth_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=30).status_code == 401
    wrong = requests.post(
        search, json={"max_results": 1}, auth=("maestro", "not-the-password"), timeout=30
    )
    assert wrong.status_code == 401
    right = requests.post(
        search,
        json={"max_results": 1},
        auth=(auth_server.user, auth_server.user_password),
        timeout=30,
    )
    assert right.status_code == 200


def test_maestro_without_credentials_is_refused_with_a_clear_error(auth_server, s3_server):
    env = base_env(s3_server, auth_server, "auth-refused")
    done = maestro(["run", LQG, "--preset", "smoke", *SHORT], env)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("maestro: setup error: ")
    assert "MLFLOW_TRACKING_USERNAME" in last and "401" in last
    assert "Traceback" not in done.stderr
    # Refused before anything was written to the store.
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="auth-refused")
    assert listed.get("KeyCount", 0) == 0


# The URI form differs from the variables form only in how the credentials reach MLflow's
# client (moved out of the URI into the variables before anything runs), so its run is the
# same run cut to one arm: still a child run logged from a Ray worker, artifacts and stored
# objects to search, at a fraction of the requests.
ONE_TRIAL = ["--set", "trials.arms={ucb1: {algorithm: ucb1}}", "--set", "claims=[]"]


@pytest.mark.parametrize("given_in", ["variables", "uri"])
def test_maestro_logs_with_credentials_from_the_environment_and_leaks_no_secret(
    auth_server, s3_server, monkeypatch, tmp_path, given_in
):
    env = base_env(s3_server, auth_server, f"auth-store-{given_in}")
    if given_in == "variables":
        env["MLFLOW_TRACKING_USERNAME"] = auth_server.user
        env["MLFLOW_TRACKING_PASSWORD"] = auth_server.user_password
        args = SHORT
    else:  # moved out of the URI before MLflow or Maestro could print it
        netloc = f"{auth_server.user}:{auth_server.user_password}@"
        env["MLFLOW_TRACKING_URI"] = auth_server.url.replace("://", f"://{netloc}")
        args = [*SHORT, *ONE_TRIAL]
    done = maestro(["run", LQG, "--preset", "smoke", *args], env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = next(
        line.split(":", 1)[1].strip()
        for line in done.stdout.splitlines()
        if line.strip().startswith("mlflow run id:")
    )
    shown = [line.partition(":")[2].strip() for line in done.stdout.splitlines()]
    assert auth_server.url in shown  # the tracking URI, printed without credentials

    client = auth_server.admin_client(monkeypatch)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # The server knows who logged it: the user that created the experiment manages it.
    permission = AuthServiceClient(auth_server.url).get_user_permission(
        auth_server.user, "experiment", run.info.experiment_id
    )
    assert permission.permission == "MANAGE"
    assert run.data.params["config.rounds"] == "200"
    assert len(client.get_metric_history(run_id, "regret/ucb1")) == 4  # 200 rounds / 50

    # What Maestro produced: output, params, tags, every artifact, every stored object.
    texts = [done.stdout, done.stderr, *run.data.params.values(), *run.data.tags.values()]
    texts += [*run.data.params, *run.data.tags]
    artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    blobs = [p.read_bytes() for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "spec.yaml" for p in artifacts.rglob("*"))
    s3 = s3_server.client()
    listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"auth-store-{given_in}")
    for item in listed["Contents"]:
        blobs.append(s3.get_object(Bucket=s3_server.bucket, Key=item["Key"])["Body"].read())
    assert len(blobs) > 10
    for secret in auth_server.secrets():
        assert not any(secret in text for text in texts)
        assert not any(secret.encode() in blob for blob in blobs)
    # The server never logs them either.
    server_log = auth_server.log.read_text(errors="replace")
    assert auth_server.user_password not in server_log
    assert auth_server.admin_password not in server_log
