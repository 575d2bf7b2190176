"""End to end through real servers: `maestro run` of the RANDOMIST smoke spec against an
MLflow server process (artifacts on S3) with the Maestro store (and Tune's state) on S3,
read back through the MLflow client and boto3: the experiment's parent run and one child
run per trial; then a run killed mid-way and resumed. Then, on sqlite: where artifacts go,
the experiments' kind tag, the reward model as a logged model, and the lines that end
`maestro run` and `maestro sweep`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from maestro.tracking import Tracker, browse_hint, sqlite_artifacts

from .conftest import REPO, S3_SECRET

CLAIMS = ("randomist_below_ucb1", "randomist_below_ucb1_return", "randomist_near_optimist")
LQG = str(REPO / "jobs" / "randomist" / "lqg.yaml")
SWEEP = str(REPO / "jobs" / "randomist" / "sweep.yaml")
ARMS = {  # lqg.yaml's arms and their algorithms
    "randomist": "randomist",
    "randomist_th": "randomist",
    "optimist": "optimist",
    "ucb1": "ucb1",
    "gpucb": "gpucb",
    "thompson": "thompson",
    "phe": "phe",
}
# The smoke preset with 3 seeds instead of its 10: each arm still averages several trials
# and the ordering shows, with 21 trials to run instead of 70.
SEEDS = 3
TRIALS = len(ARMS) * SEEDS
SMOKE_SEEDS = ["--set", f"trials.seeds={SEEDS}"]


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


def store_objects(s3_server, store_prefix: str) -> dict[str, object]:
    """Key -> last-modified time of every object in the store (all pages)."""
    pages = s3_server.client().get_paginator("list_objects_v2")
    return {
        item["Key"]: item["LastModified"]
        for page in pages.paginate(Bucket=s3_server.bucket, Prefix=f"{store_prefix}/")
        for item in page.get("Contents", [])
    }


def run_state(s3_server, store_prefix: str) -> dict | None:
    """The state (`run.json`) of the one run in the store; None before it is written."""
    keys = [
        key
        for key in store_objects(s3_server, store_prefix)
        if re.fullmatch(rf"{store_prefix}/runs/randomist/[^/]+/run\.json", key)
    ]
    if not keys:
        return None
    assert len(keys) == 1, keys
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=keys[0])["Body"].read()
    return json.loads(body)


def trial_curves(s3_server, store_prefix: str) -> dict[str, object]:
    """Trial name -> last-modified time of the regret curve it stored when it ended."""
    found = {}
    for key, modified in store_objects(s3_server, store_prefix).items():
        match = re.fullmatch(r".*/trials/(trial_\d+)/regret\.npy", key)
        if match:
            found[match.group(1)] = modified
    return found


def trial_runs(client: MlflowClient, parent) -> list:
    """The experiment's child runs, one per trial."""
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        max_results=1000,
    )


def test_smoke_run_logs_everything_and_shows_the_papers_ordering(
    s3_server, mlflow_server, tmp_path
):
    env = maestro_env(s3_server, mlflow_server, "smoke-store")
    done = maestro_run(env, *SMOKE_SEEDS)
    assert done.returncode == 0, done.stderr[-3000:]
    state = run_state(s3_server, "smoke-store")
    assert state["status"] == "FINISHED" and state["kind"] == "run"
    # Progress over the experiment's trials, with throughput, was shown.
    bar = rf"run {re.escape(state['run_name'])}: 100%.* {TRIALS}/{TRIALS} .*(trial/s|s/trial)"
    assert re.search(bar, done.stderr), done.stderr[-3000:]

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method"] == "randomist"
    assert params["config.rounds"] == "2000"
    assert params["trials.seeds"] == str(SEEDS)
    assert params["trials.arms.thompson.algorithm"] == "thompson"
    assert params["config.lqg.horizon"] == "20"
    tags = run.data.tags
    assert tags["maestro.method"] == "randomist"
    assert tags["maestro.preset"] == "smoke"
    assert tags["maestro.kind"] == "run"
    assert tags["maestro.step"] == "rounds"
    assert tags["mlflow.source.git.commit"]
    assert tags["maestro.version.ray"] == "2.60.0"
    assert tags["maestro.store"].startswith(f"s3://{s3_server.bucket}/smoke-store/runs/")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # The run ends by saying where to look: the run's page on the server.
    url = f"{mlflow_server.url}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert f"  browse:           {url}" in done.stdout.splitlines()

    # One child run per trial (arm x seed), each with its own curve at a real step (the
    # round): 2000 / 50 = 40 points.
    trials = trial_runs(client, run)
    assert sorted((t.data.tags["arm"], t.data.tags["seed"]) for t in trials) == sorted(
        (arm, str(seed)) for arm in ARMS for seed in range(SEEDS)
    )
    assert len({t.data.tags["maestro.trial"] for t in trials}) == TRIALS
    for trial in trials:
        arm, seed = trial.data.tags["arm"], int(trial.data.tags["seed"])
        assert trial.info.status == "FINISHED"
        assert trial.info.run_name == f"{arm}-seed{seed}"
        assert trial.data.tags["maestro.kind"] == "trial"
        assert trial.data.tags["maestro.experiment"] == state["run_name"]
        assert trial.data.tags["maestro.trial.outcome"] == "completed"
        assert json.loads(trial.data.tags["maestro.trial.params"]) == {"arm": arm, "seed": seed}
        assert trial.data.params["config.algorithm"] == ARMS[arm]
        assert trial.data.params["seed"] == str(seed)
        assert trial.data.metrics["step"] == 2000
    sample = next(t for t in trials if t.data.tags["arm"] == "ucb1")
    own = sorted((m.step, m.value) for m in client.get_metric_history(sample.info.run_id, "regret"))
    assert [step for step, _ in own] == list(range(50, 2001, 50))
    assert own[-1][1] == pytest.approx(sample.data.metrics["final_regret"])

    # The parent's curves: the mean over seeds per arm, at the same steps.
    history = client.get_metric_history(run.info.run_id, "regret/ucb1")
    assert [m.step for m in sorted(history, key=lambda m: m.step)][:3] == [50, 100, 150]
    assert len(history) == 40
    assert len(client.get_metric_history(run.info.run_id, "regret_band/ucb1")) == 40
    final = {k: v for k, v in run.data.metrics.items() if k.startswith("summary/final_regret/")}
    assert sorted(final) == sorted(f"summary/final_regret/{arm}" for arm in ARMS)
    for arm in ARMS:  # each arm's summary is its trials' mean final regret
        finals = [t.data.metrics["final_regret"] for t in trials if t.data.tags["arm"] == arm]
        assert final[f"summary/final_regret/{arm}"] == pytest.approx(sum(finals) / len(finals))
    assert run.data.metrics["trials/trials"] == TRIALS and run.data.metrics["trials/errored"] == 0
    ucb1 = final["summary/final_regret/ucb1"]
    # GP-UCB's regret is a small fraction of UCB1's at this scale (docs/methods/randomist.md).
    assert final["summary/final_regret/gpucb"] < 0.2 * ucb1
    assert sorted(history, key=lambda m: m.step)[-1].value == pytest.approx(ucb1)
    verdicts = {"reproduced", "contradicted", "inconclusive"}
    assert {tags[f"maestro.claim.{c}"] for c in CLAIMS} <= verdicts

    # Each trial's curve and Tune's state went to the store on S3, beside the run's state.
    assert len(trial_curves(s3_server, "smoke-store")) == TRIALS
    prefix = f"smoke-store/runs/randomist/{state['run_name']}/tune/"
    assert any(k.startswith(prefix) for k in store_objects(s3_server, "smoke-store"))

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
    trial_values = [v for t in trials for v in (*t.data.params.values(), *t.data.tags.values())]
    everything = " ".join(
        [*params.values(), *tags.values(), *trial_values]
        + [Path(spec_text).read_text(), done.stdout, done.stderr]
    )
    assert S3_SECRET not in everything

    # Running the finished spec again reports it and changes nothing.
    again = maestro_run(env, *SMOKE_SEEDS)
    assert again.returncode == 0
    assert "already finished" in again.stdout
    assert len(client.get_metric_history(run.info.run_id, "regret/ucb1")) == 40
    assert len(trial_runs(client, run)) == TRIALS


def test_killed_run_resumes_into_the_same_mlflow_run(s3_server, mlflow_server):
    # 7 algorithms x 2 seeds = 14 trials.
    env = maestro_env(s3_server, mlflow_server, "resume-store")
    options = ["--set", "seed=100", "--set", "trials.seeds=2", "--set", "config.rounds=3000"]
    process = subprocess.Popen(
        maestro_command(*options),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    mlflow = MlflowClient(mlflow_server.url)

    def finished_trials(parent_id: str) -> dict[str, object]:
        """Trial name -> its child run, of the trials whose runs have FINISHED."""
        runs = trial_runs(mlflow, mlflow.get_run(parent_id))
        return {r.data.tags["maestro.trial"]: r for r in runs if r.info.status == "FINISHED"}

    # Killed once three trials have finished (their runs closed in MLflow).
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
        killed = run_state(s3_server, "resume-store")
        # (The run's identity is stored first, its MLflow run id a moment later.)
        if (
            killed
            and killed["mlflow_run_id"]
            and len(finished_trials(killed["mlflow_run_id"])) >= 3
        ):
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = finished_trials(killed["mlflow_run_id"])
    curves_before = trial_curves(s3_server, "resume-store")
    assert 3 <= len(finished_before) < 14
    assert set(finished_before) <= set(curves_before)  # a finished trial stored its curve
    killed = run_state(s3_server, "resume-store")
    assert killed["status"] == "RUNNING"  # killed: nothing got to mark it

    done = maestro_run(env, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    after = trial_curves(s3_server, "resume-store")
    assert len(after) == 14
    for name in finished_before:  # finished work was not redone
        assert after[name] == curves_before[name]
    state = run_state(s3_server, "resume-store")
    assert state["status"] == "FINISHED"
    assert state["mlflow_run_id"] == killed["mlflow_run_id"]

    runs = mlflow.search_runs(
        [mlflow.get_experiment_by_name("randomist").experiment_id],
        filter_string=f"tags.mlflow.runName = '{state['run_name']}'",
    )
    assert len(runs) == 1  # resumed, not duplicated
    assert runs[0].info.status == "FINISHED"
    assert len(mlflow.get_metric_history(runs[0].info.run_id, "regret/randomist")) == 60
    # One child run per trial; finished ones untouched, the others continued into their
    # runs with no point logged twice.
    trials = trial_runs(mlflow, runs[0])
    assert len(trials) == 14 and len({t.data.tags["maestro.trial"] for t in trials}) == 14
    assert sorted((t.data.tags["arm"], t.data.tags["seed"]) for t in trials) == sorted(
        (arm, str(seed)) for arm in ARMS for seed in range(100, 102)
    )
    for trial in trials:
        assert trial.info.status == "FINISHED"
        before = finished_before.get(trial.data.tags["maestro.trial"])
        if before is not None:
            assert (trial.info.run_id, trial.info.end_time) == (
                before.info.run_id,
                before.info.end_time,
            )
        steps = sorted(m.step for m in mlflow.get_metric_history(trial.info.run_id, "regret"))
        assert steps == list(range(50, 3001, 50)), trial.data.tags["maestro.trial"]


def test_sqlite_artifacts_go_beside_the_database_and_experiments_open_on_runs(
    tmp_path, monkeypatch
):
    database = tmp_path / "tracking" / "mlruns.db"
    database.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.start("located", "run", {"a": 1}, {})
    tracker.log_bytes(b"hello", "notes/hello.txt")
    tracker.end()
    stored = list((database.parent / "mlartifacts").rglob("hello.txt"))
    assert [path.read_bytes() for path in stored] == [b"hello"]
    assert not (tmp_path / "mlruns").exists()  # MLflow's own default, in the working folder

    client = MlflowClient(f"sqlite:///{database}")
    kind = client.get_experiment_by_name("located").tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    # An experiment made without the tag gets it when Maestro next logs to it.
    client.create_experiment("made-by-hand")
    Tracker.start("made-by-hand", "run", {}, {}).end()
    kind = client.get_experiment_by_name("made-by-hand").tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"

    # The default (relative) database puts them in ./mlartifacts.
    assert sqlite_artifacts("sqlite:///mlruns.db") == (tmp_path / "mlartifacts").as_uri()
    assert sqlite_artifacts("sqlite:////srv/db/x.db?timeout=5") == "file:///srv/db/mlartifacts"
    assert sqlite_artifacts("http://mlflow:5000") is None


def test_browse_hint_is_the_runs_url_or_the_mlflow_ui_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        browse_hint("https://alice:s3cret@mlflow.example.com:5000/", "7", "abc")
        == "https://mlflow.example.com:5000/#/experiments/7/runs/abc"
    )
    # A relative database path is made absolute: the command works from any folder.
    assert (
        browse_hint("sqlite:///mlruns.db", "1", "abc")
        == f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlruns.db'}"
    )
    assert (
        browse_hint("postgresql://bob:pw@db:5432/mlflow", "1", "abc")
        == "mlflow ui --backend-store-uri postgresql://db:5432/mlflow"
    )


def printed(output: str) -> dict[str, str]:
    """`label: value` lines of a command's output."""
    return {
        label.strip(): value.strip()
        for label, _, value in (line.partition(":") for line in output.splitlines()[1:])
    }


def test_run_and_sweep_end_with_where_to_browse(tmp_path, monkeypatch, capsys):
    from maestro import cli, run

    database = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    monkeypatch.setenv("MAESTRO_STORE", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    tracker = Tracker.start("randomist", "lqg", {}, {})
    tracker.end()
    run_id = tracker.run_id

    # What ran is not the point: the lines after it are.
    result = run.RunResult("run", "lqg", "runs/randomist/lqg", run_id, {"final_regret/ucb1": 1.5})
    calls = []

    def run_experiment(spec, kind, new_run):
        calls.append((spec.source, kind, new_run))
        return result if kind == "run" else swept

    monkeypatch.setattr(run, "run_experiment", run_experiment)
    assert cli.main(["run", LQG, "--preset", "smoke"]) == 0
    lines = printed(capsys.readouterr().out)
    assert lines["mlflow run id"] == run_id
    assert lines["tracking uri"] == f"sqlite:///{database}"
    assert lines["browse"] == f"mlflow ui --backend-store-uri sqlite:///{database}"
    assert lines["mlflow artifacts"] == f"{(tmp_path / 'mlartifacts').as_uri()}/{run_id}/artifacts"
    assert lines["store"] == (tmp_path / "store" / "runs" / "randomist" / "lqg").as_uri()
    assert lines["final_regret/ucb1"] == "1.5"

    best = {
        "trial": "trial_00007",
        "run_id": "abc123",
        "params": {"arm": "default", "seed": 1, "config.exploration": 0.1},
        "regret": 2.25,
    }
    summary = {"trials": 45, "errored": 0, "stopped_early": 0, "best": [best]}
    swept = run.RunResult("sweep", "lqg-sweep", "sweeps/randomist/lqg-sweep", run_id, summary)
    assert cli.main(["sweep", SWEEP, "--preset", "smoke", "--new-run"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0] == "sweep lqg-sweep: finished"
    lines = printed(output)
    assert lines["mlflow run id"] == run_id
    assert lines["browse"] == f"mlflow ui --backend-store-uri sqlite:///{database}"
    assert lines["mlflow artifacts"] == f"{(tmp_path / 'mlartifacts').as_uri()}/{run_id}/artifacts"
    assert lines["store"] == (tmp_path / "store" / "sweeps" / "randomist" / "lqg-sweep").as_uri()
    assert (lines["trials"], lines["errored"], lines["stopped_early"]) == ("45", "0", "0")
    assert lines["best 1"] == "regret=2.25  arm=default, seed=1, config.exploration=0.1  abc123"
    assert calls == [(LQG, "run", False), (SWEEP, "sweep", True)]

    # A sweep with errored trials ends with a failing exit status.
    swept.summary = {**summary, "errored": 2}
    assert cli.main(["sweep", SWEEP, "--preset", "smoke"]) == 1
    assert printed(capsys.readouterr().out)["errored"] == "2"

    # With tracking off there is nothing to browse, and it says so.
    monkeypatch.setattr(
        run,
        "run_experiment",
        lambda spec, kind, new_run: SimpleNamespace(**{**vars(result), "mlflow_run_id": None}),
    )
    assert cli.main(["run", LQG, "--preset", "smoke"]) == 0
    assert printed(capsys.readouterr().out)["mlflow"] == "tracking off"


def test_motif_reward_model_is_a_logged_model_of_its_run(tmp_path, monkeypatch):
    import mlflow.pyfunc
    import torch

    from maestro.feedback.reward_model import (
        CaptionRewardNet,
        Normalisation,
        RewardModel,
        RewardModelConfig,
    )
    from maestro.feedback.stages import log_reward_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = CaptionRewardNet(RewardModelConfig(buckets=256, embedding_dim=8, hidden=8))
    model = RewardModel(net, Normalisation(mean=0.1, std=2.0, threshold=0.5))
    tracker = Tracker.start("motif", "reward", {}, {})
    log_reward_model(SimpleNamespace(tracker=tracker), model)
    tracker.end()

    client = MlflowClient()
    run = client.get_run(tracker.run_id)
    (logged,) = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert (logged.name, str(logged.status)) == ("reward_model", "READY")
    assert [output.model_id for output in run.outputs.model_outputs] == [logged.model_id]

    # It loads back with unpickling forbidden, and scores captions as the learner does.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    captions = ["You kill the newt!", "It's solid stone.", ""]
    assert loaded.predict(captions) == pytest.approx(model.normalised(captions).tolist())
    assert loaded.metadata.metadata["normalisation"]["threshold"] == 0.5
