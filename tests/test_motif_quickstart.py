"""`maestro run jobs/motif/quickstart.yaml` end to end (collect, annotate, reward model,
training, evaluation) on real NLE, the embedding judge and RLlib, killed with SIGKILL during
training and rerun: its trial resumes from the agent's checkpoint into the same MLflow runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from .conftest import REPO

SPEC = str(REPO / "jobs" / "motif" / "quickstart.yaml")
RUN = "quickstart-killed"
TRAIN_STEPS = 4096
# PPO here (the quickstart's default APPO is trained in test_rl.py): a checkpoint after
# every 512-step iteration.
SETTINGS = {
    "config.collect.num_shards": 4,
    "config.train.algorithm": "ppo",
    "config.train.appo_loss": "rllib",  # an APPO setting; PPO has RLlib's loss
    "config.train.env_steps": TRAIN_STEPS,
    "config.train.num_envs_per_env_runner": 8,
    "config.train.train_batch_size": 512,
    "config.train.min_iteration_seconds": 0,
    "config.train.checkpoint_every": 1,
    "trials.report_seconds": 0,  # and each checkpoint to Tune at once
    "config.train.eval_episodes": 2,
    "config.train.eval_max_episode_steps": 300,
    "config.train.agent.core": "mlp",
    # Episodes end within the run's steps, so training reports finished episodes.
    "config.train.max_episode_steps": 300,
    "tracking.run_name": RUN,
}
COMMAND = [sys.executable, "-m", "maestro", "run", SPEC, "--preset", "smoke"]
for key, value in SETTINGS.items():
    COMMAND += ["--set", f"{key}={value}"]


def checkpoint_steps(folder: Path) -> set[int]:
    """The env steps of the trial checkpoints Tune holds under an experiment's folder."""
    steps = set()
    for state in folder.glob("tune/trial_*/checkpoint_*/state.json"):
        with contextlib.suppress(OSError, ValueError):  # being written or deleted
            steps.add(json.loads(state.read_text())["state"]["loop"]["env_steps"])
    return steps


def test_quickstart_killed_in_training_resumes_into_the_same_runs(mlflow_server, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    env["MAESTRO_STORE"] = str(tmp_path / "store")
    env["TUNE_GLOBAL_CHECKPOINT_S"] = "1"  # Tune saves its experiment state every second
    folder = tmp_path / "store" / "runs" / "motif" / RUN
    log = (tmp_path / "first.log").open("wb")
    process = subprocess.Popen(
        COMMAND, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 400
    first = None  # when the first checkpoint appeared
    # Killed past the second checkpoint, with time for a state save that holds one.
    while max(checkpoint_steps(folder), default=0) < 1024 or time.monotonic() - first < 1.5:
        assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        if first is None and checkpoint_steps(folder):
            first = time.monotonic()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = checkpoint_steps(folder)
    assert max(checkpoints) < TRAIN_STEPS, "the kill came too late to interrupt training"

    done = subprocess.run(COMMAND, env=env, cwd=tmp_path, capture_output=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert b"finished" in done.stdout

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("motif").experiment_id
    (parent,) = client.search_runs([experiment], f"attributes.run_name = '{RUN}'")
    assert parent.info.status == "FINISHED"  # the rerun continued the killed run
    (trial,) = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert trial.info.status == "FINISHED"  # and its one trial's run
    run_id, metrics = trial.info.run_id, trial.data.metrics

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    # The reward model learned its annotator's preferences on the quickstart's own data.
    assert parent.data.metrics["reward/final_val_pairs"] >= 30
    assert parent.data.metrics["reward/final_val_accuracy"] > 0.7

    # Training continued from a checkpoint: one resume, env steps never restart at 0.
    ((resumed_at, value),) = history("resumed_at_step")
    assert resumed_at == value and resumed_at in checkpoints and resumed_at >= 512
    steps = [s for s, _ in history("env_steps_per_s")]
    assert steps == sorted(set(steps)) and steps[0] <= resumed_at < steps[-1]
    after = [s for s in steps if s > resumed_at]
    assert (np.diff([resumed_at, *after]) < 1024).all(), after
    final = steps[-1]
    assert final >= TRAIN_STEPS and metrics["env_steps"] == final
    assert parent.data.metrics["summary/env_steps/default"] == final

    # Evaluation of the agent and of random actions on the same games, in the summary too.
    for name in ("score", "depth", "distinct_messages", "length"):
        assert history(f"eval/{name}")[-1][0] == final
        assert history(f"eval_random/{name}")[-1][0] == final
    for name in ("score", "depth", "distinct_messages"):
        assert parent.data.metrics[f"summary/eval/{name}/default"] == metrics[f"eval/{name}"]
    assert metrics["eval/episodes"] == 2 and metrics["eval/depth"] >= 1
    assert 0 < metrics["eval/length"] <= 300
    assert metrics["train/episodes"] >= 1

    plots = [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    assert "plots/training_returns.png" in plots
    assert (folder / "plots" / "training_returns.png").read_bytes()[:4] == b"\x89PNG"
    assert max(checkpoint_steps(folder)) == final


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
        # 3 training reports, then the evaluation and the final metrics.
        "--set", "sweep.scheduler={type: asha, max_t: 5, grace_period: 1, reduction_factor: 2}",
    ]  # fmt: skip
    done = subprocess.run(sweep, env=env, cwd=tmp_path, capture_output=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("motif-sweep").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`maestro.kind` = 'sweep'")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 3
    coefficients = set()
    for trial in trials:
        assert trial.info.status == "FINISHED"
        outcome = trial.data.tags["maestro.trial.outcome"]
        assert outcome in ("completed", "stopped")
        coefficients.add(trial.data.params["config.intrinsic.coef_intrinsic"])
        scores = client.get_metric_history(trial.info.run_id, "train/score")
        steps = sorted(m.step for m in scores)
        assert steps and steps[-1] >= 1024  # curves against env steps
        if outcome == "completed":
            assert trial.data.metrics["env_steps"] >= 3072
            assert "eval/score" in trial.data.metrics and "eval_random/score" in trial.data.metrics
    assert len(coefficients) == 3  # each trial its own coefficients
