"""`maestro run jobs/motif/annotate.yaml` end to end on real NLE with the embedding judge:
killed mid-annotation with SIGKILL and rerun, it ends with exactly the dataset an
uninterrupted run produces. And the annotation service's queue depth, in questions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from maestro.feedback.annotation import AnnotationServiceConfig, annotate
from maestro.feedback.pairs import Question
from maestro.feedback.preferences import PreferenceStore
from maestro.llm import AnnotatorConfig, load_prompt_set
from maestro.store import LocalStore

from .conftest import REPO

SPEC = str(REPO / "jobs" / "motif" / "annotate.yaml")
SMALL = [  # without a preset: a random-play dataset, the embedding judge
    "--set",
    "config.stages=[collect, annotate]",
    "--set",
    "config.collect.num_shards=4",
    "--set",
    "config.pairs.num_draws=20000",
    "--set",
    "config.annotation.batch_size=16",
    "--set",
    "config.annotation.batches_per_actor=1",
]


def command(run_name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "maestro",
        "run",
        SPEC,
        *SMALL,
        "--set",
        f"tracking.run_name={run_name}",
    ]


@pytest.fixture
def env(tmp_path):
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns.db",
        "MAESTRO_STORE": str(tmp_path / "store"),
    }


def preferences(store: LocalStore, run_name: str) -> PreferenceStore | None:
    """The run's preference store, once its folder (named by the stage's inputs) exists."""
    folders = list((store.path / "runs" / "motif" / run_name).glob("preferences-*"))
    assert len(folders) <= 1, folders
    return PreferenceStore(store, f"runs/motif/{run_name}/{folders[0].name}") if folders else None


def records(store: LocalStore, run_name: str) -> list[dict]:
    table = preferences(store, run_name).read()
    rows = table.drop_columns(["annotated_at"]).to_pylist()
    return sorted(rows, key=lambda r: r["question_id"])


def test_killed_annotation_resumes_to_the_uninterrupted_dataset(env, tmp_path):
    store = LocalStore(tmp_path / "store")
    whole = subprocess.run(
        command("whole"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = records(store, "whole")
    assert len(expected) > 300
    assert len({r["question_id"] for r in expected}) == len(expected)

    process = subprocess.Popen(
        command("killed"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while (prefs := preferences(store, "killed")) is None or not prefs.done_batches():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = prefs.done_batches()
    total_batches = -(-len(expected) // 16)
    assert 0 < len(partial) < total_batches, (len(partial), total_batches)

    resumed = subprocess.run(
        command("killed"), env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = records(store, "killed")
    assert len({r["question_id"] for r in got}) == len(got)  # none labelled twice
    assert got == expected  # none lost, same labels, raw answers, model and prompt version
    assert prefs.done_batches() == set(range(total_batches))

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("motif").experiment_id],
        filter_string="tags.mlflow.runName = 'killed'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    valid = sum(r["valid"] for r in expected)
    assert metrics["annotation/pairs_labelled"] == valid
    assert metrics["annotation/invalid_rate"] == pytest.approx(1 - valid / len(expected))
    assert metrics["pairs/asked"] == len(expected)  # identical captions are ties, not asked
    assert metrics["pairs/questions"] > len(expected)
    assert metrics["collect/unique_captions"] > 20
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "annotation")]
    assert "annotation/examples.json" in artifacts


class RecordedMetrics:
    """Stands in for `AnnotationMetrics`: keeps what `annotate` records for Prometheus."""

    def __init__(self):
        self.records: list[dict] = []

    def record(self, **values) -> None:
        self.records.append(values)


@pytest.fixture
def local_ray(monkeypatch):
    """A private local Ray cluster of 2 CPUs, shut down after the test."""
    import ray

    from maestro.runtime import init_ray
    from maestro.spec import ResourcesSpec

    # "local": never join a cluster another test left running.
    monkeypatch.setenv("RAY_ADDRESS", "local")
    init_ray(ResourcesSpec(num_cpus=2))
    yield
    ray.shutdown()


def test_queue_depth_counts_questions_for_mlflow_and_prometheus(local_ray, tmp_path):
    questions = [
        Question(f"q{i:02d}", f"You see {i} gold pieces.", f"You hear {i} birds.")
        for i in range(10)
    ]
    # One actor, one batch at a time: batches of 3, 3, 3 and 1 answered in order.
    service = AnnotationServiceConfig(batch_size=3, batches_per_actor=1, log_every_batches=1)
    logged: list[dict] = []
    prometheus = RecordedMetrics()
    result = annotate(
        questions,
        load_prompt_set().task("score"),
        PreferenceStore(LocalStore(tmp_path), "preferences"),
        AnnotatorConfig(),
        service,
        on_progress=lambda values, pairs: logged.append(values),
        metrics=prometheus,
    )
    assert result.batches_done == 4 and result.pairs == 10
    # After each batch: the questions not yet answered (queued or in flight), not batches.
    assert [m["annotation/queue_depth"] for m in logged] == [7, 4, 1, 0]
    assert [r["queue_depth"] for r in prometheus.records] == [7, 4, 1, 0]
