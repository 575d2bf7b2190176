"""Real servers for the tests: an S3-compatible server (moto's server mode) and an MLflow
tracking server process whose artifacts go to it. Each starts once per test session."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# NetHack agent sizes (`AgentConfig`) as small as the encoders allow, for CPU tests.
TINY_AGENT = dict(
    char_embedding_dim=4,
    screen_channels=[8, 8],
    screen_dim=16,
    message_length=32,
    message_embedding_dim=4,
    message_channels=8,
    message_dim=8,
    blstats_dim=8,
    core_dim=16,
)
# Fake credentials for the local S3 server: not secrets, but tests check they never leak.
S3_KEY_ID = "maestro-test-key-id"
S3_SECRET = "maestro-test-secret-value-1234"


def free_port() -> int:
    """A TCP port nobody listens on right now (outside Ray's worker port range)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port
    raise RuntimeError("no free port outside Ray's worker range")


def wait_http(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers with a status below 500 (a 4xx is a server up and refusing;
    a 5xx is one still starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave with pytest's exit status once everything is reported, without CPython's
    teardown of the modules. The in-process Ray workers, gRPC and torch threads of the
    tests can crash that teardown (a segfault after "312 passed" failed CI once), turning
    a passing suite into a failing one. Registered last, it runs first at exit, so it
    stops Ray itself."""
    atexit.register(exit_now, session)


def exit_now(session: pytest.Session) -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))


@contextlib.contextmanager
def cpu_load(processes: int = 2) -> Iterator[None]:
    """Busy processes keeping every core loaded, as a machine running other work is."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread in the test process: other processes (env runners, learners, other
    work) share the two cores, and idle torch threads spinning on a busy machine slow
    everything down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stop(process: subprocess.Popen) -> None:
    """Terminate a server process (and wait for it)."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """Environment that points boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server on a free port, with one bucket."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = S3Server(f"http://127.0.0.1:{port}", "maestro-test")
    try:
        wait_http(server.endpoint, process=process)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop(process)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The S3 server's settings in this test's environment."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@dataclass
class MlflowServer:
    url: str
    artifact_prefix: str


def start_mlflow_server(
    folder: Path, port: int, env: dict[str, str], artifacts: str | None = None
) -> subprocess.Popen:
    """An MLflow tracking server process on `port` with its sqlite database in `folder` and
    artifacts proxied to `artifacts` (default: `folder/artifacts`); its log in the folder."""
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder}/mlflow.db",
            "--artifacts-destination",
            artifacts or str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=(folder / "server.log").open("ab"),
        stderr=subprocess.STDOUT,
        cwd=folder,
    )


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory) -> Iterator[MlflowServer]:
    """An MLflow tracking server process: sqlite backend, artifacts proxied to S3."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, **s3_server.env()}
    process = start_mlflow_server(folder, port, env, f"s3://{s3_server.bucket}/mlflow")
    server = MlflowServer(f"http://127.0.0.1:{port}", "mlflow")
    try:
        wait_http(f"{server.url}/health", timeout=120, process=process)
        yield server
    finally:
        stop(process)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A clean working directory with the embedded defaults pointed inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MAESTRO_STORE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path
