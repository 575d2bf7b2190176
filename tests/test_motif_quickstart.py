"""`maestro run jobs/motif/quickstart.yaml` end to end (collect, annotate, reward model,
training, evaluation) on real NLE, the embedding judge and RLlib, killed with SIGKILL during
training and rerun: it resumes from the agent's checkpoint into the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from mlflow.tracking import MlflowClient

from maestro.rl.train import read_checkpoint_state
from maestro.store import LocalStore

from .conftest import REPO

SPEC = str(REPO / "jobs" / "motif" / "quickstart.yaml")
RUN = "quickstart-killed"
TRAIN_STEPS = 4096
# PPO here (the quickstart's default APPO is trained in test_rl.py): a checkpoint after
# every 512-step iteration.
SETTINGS = {
    "config.collect.num_shards": 4,
    "config.train.algorithm": "ppo",
    "config.train.env_steps": TRAIN_STEPS,
    "config.train.num_envs_per_env_runner": 8,
    "config.train.train_batch_size": 512,
    "config.train.min_iteration_seconds": 0,
    "config.train.checkpoint_every": 1,
    "config.train.eval_episodes": 2,
    "config.train.eval_max_episode_steps": 300,
    "config.train.agent.use_lstm": False,
    "tracking.run_name": RUN,
}
COMMAND = [sys.executable, "-m", "maestro", "run", SPEC, "--preset", "smoke"]
for key, value in SETTINGS.items():
    COMMAND += ["--set", f"{key}={value}"]


def test_quickstart_killed_in_training_resumes_into_the_same_run(mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    env["MAESTRO_STORE"] = str(tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    prefix = f"runs/motif/{RUN}"
    log = (tmp_path / "first.log").open("wb")
    process = subprocess.Popen(
        COMMAND, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 400
    while (state := read_checkpoint_state(store, f"{prefix}/agent")) is None or (
        state.env_steps < 1024
    ):
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = read_checkpoint_state(store, f"{prefix}/agent").env_steps
    assert 1024 <= killed_at < TRAIN_STEPS, "the kill came too late to interrupt training"

    done = subprocess.run(COMMAND, env=env, cwd=tmp_path, capture_output=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert b"finished" in done.stdout

    client = MlflowClient(mlflow_server.url)
    runs = client.search_runs(
        [client.get_experiment_by_name("motif").experiment_id],
        filter_string=f"attributes.run_name = '{RUN}'",
    )
    assert len(runs) == 1  # the rerun continued the killed run
    run = runs[0]
    assert run.info.status == "FINISHED"
    run_id, metrics = run.info.run_id, run.data.metrics

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    # The reward model learned its annotator's preferences on the quickstart's own data.
    assert metrics["reward/final_val_pairs"] >= 30
    assert metrics["reward/final_val_accuracy"] > 0.7

    # Training continued from the checkpoint: one resume, env steps never restart at 0.
    assert history("train/resumed_at_env_steps") == [(killed_at, killed_at)]
    steps = [s for s, _ in history("env_steps_per_s")]
    assert steps == sorted(set(steps)) and steps[0] < killed_at < steps[-1]
    after = [s for s in steps if s > killed_at]
    assert (np.diff([killed_at, *after]) < 1024).all(), after
    final = steps[-1]
    assert final >= TRAIN_STEPS and metrics["summary/env_steps"] == final

    # Evaluation of the agent and of random actions on the same games, in the summary too.
    for name in ("score", "depth", "distinct_messages", "length"):
        assert history(f"eval/{name}")[-1][0] == final
        assert history(f"eval_random/{name}")[-1][0] == final
        assert metrics[f"summary/eval_{name}"] == metrics[f"eval/{name}"]
    assert metrics["eval/episodes"] == 2 and metrics["eval/depth"] >= 1
    assert 0 < metrics["eval/length"] <= 300
    assert metrics["train/episodes"] >= 1

    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    assert "plots/training_returns.png" in plots
    assert read_checkpoint_state(store, f"{prefix}/agent").env_steps == final


def test_a_motif_sweep_trains_agents_on_a_stored_reward_model(tmp_path):
    """`maestro sweep jobs/motif/sweep.yaml`: trials vary the reward's coefficients on the
    reward model of a finished run; each trial is one MLflow child run with its curves
    against env steps, its checkpoint in the store, and ASHA's verdict."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    env["MAESTRO_STORE"] = str(tmp_path / "store")
    reward_run = [
        sys.executable, "-m", "maestro", "run", SPEC, "--preset", "smoke",
        "--set", "config.collect.num_shards=4",
        "--set", "config.stages=[collect, annotate, reward]",
        "--set", "tracking.run_name=motif-reward",
    ]  # fmt: skip
    done = subprocess.run(reward_run, env=env, cwd=tmp_path, capture_output=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    sweep = [
        sys.executable, "-m", "maestro", "sweep", str(REPO / "jobs" / "motif" / "sweep.yaml"),
        "--preset", "smoke",
        "--set", "config.train.env_steps=3072",
        "--set", "config.train.max_episode_steps=200",
        "--set", "sweep.num_samples=3",
        "--set", "sweep.scheduler={type: asha, max_t: 3, grace_period: 1, reduction_factor: 2}",
    ]  # fmt: skip
    done = subprocess.run(sweep, env=env, cwd=tmp_path, capture_output=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("motif-sweep").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`maestro.kind` = 'sweep'")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 3
    store = LocalStore(tmp_path / "store")
    coefficients = set()
    for trial in trials:
        assert trial.info.status == "FINISHED"
        outcome = trial.data.tags["maestro.trial.outcome"]
        assert outcome in ("completed", "stopped")
        coefficients.add(trial.data.params["config.intrinsic.coef_intrinsic"])
        scores = client.get_metric_history(trial.info.run_id, "train/score")
        steps = sorted(m.step for m in scores)
        assert steps and steps[-1] >= 1024  # curves against env steps
        name = trial.data.tags["maestro.sweep.trial"]
        agent = f"sweeps/motif/{parent.info.run_name}/trials/{name}/agent"
        checkpoint = read_checkpoint_state(store, agent)
        if outcome == "completed":
            assert checkpoint.env_steps >= 3072
            assert "eval/score" in trial.data.metrics and "eval_random/score" in trial.data.metrics
    assert len(coefficients) == 3  # each trial its own coefficients
