"""The paper's workflow through `maestro run`, on real NLE, the embedding judge and RLlib:
an agent trained on the score alone (`jobs/motif/score_agent.yaml`), a dataset collected by
its checkpoint and annotated once (`jobs/motif/annotate.yaml`), and a task run that trains on
that reward model (`reward_model_from`)."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from maestro.methods.motif.train import stored_agent
from maestro.store import LocalStore

from .conftest import REPO

JOBS = REPO / "jobs" / "motif"
SMALL = {  # every step as small as still makes sense
    "config.collect.num_shards": 2,
    "config.collect.max_episode_steps": 300,
    "config.pairs.num_draws": 600,
    "config.train.algorithm": "ppo",
    "config.train.env_steps": 1024,
    "config.train.num_envs_per_env_runner": 4,
    "config.train.train_batch_size": 512,
    "config.train.min_iteration_seconds": 0,
    "config.train.eval_episodes": 1,
    "config.train.eval_max_episode_steps": 100,
    "config.train.agent.core": "mlp",
}


def maestro_run(spec: str, workdir, *settings: str) -> str:
    command = [sys.executable, "-m", "maestro", "run", str(JOBS / spec), "--preset", "smoke"]
    for setting in [*(f"{k}={v}" for k, v in SMALL.items()), *settings]:
        command += ["--set", setting]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_one_annotated_dataset_from_a_score_agent_serves_a_task_run(workdir):
    maestro_run("score_agent.yaml", workdir)
    store = LocalStore(workdir / "maestro-store")
    agent = stored_agent(store, "runs/motif/motif-score-agent-smoke")
    assert store.get_json("runs/motif/motif-score-agent-smoke/prepared.json") == {}

    maestro_run("annotate.yaml", workdir)
    prepared = store.get_json("runs/motif/motif-annotations-smoke/prepared.json")
    assert set(prepared) == {"dataset", "preferences", "reward_model"}
    # The dataset is the score agent's play: its plan names that checkpoint's digest.
    plan = store.get_json(f"{prepared['dataset']}/plan.json")
    assert plan["policy"] == "checkpoint"
    assert plan["policy_sha256"] == store.checksum(agent)

    out = maestro_run(
        "staircase.yaml",
        workdir,
        "config.stages=[train]",
        "config.reward_model_from=runs/motif/motif-annotations-smoke",
        "tracking.run_name=staircase-on-shared",
    )
    assert "finished" in out
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("motif").experiment_id

    def trial_metrics(run_name: str) -> dict[str, float]:
        (parent,) = client.search_runs([experiment], f"tags.mlflow.runName = '{run_name}'")
        (trial,) = client.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        return trial.data.metrics

    # The score agent learned from the env reward alone; the task run from the shared model.
    assert "train/intrinsic_return" not in trial_metrics("motif-score-agent-smoke")
    assert "train/intrinsic_reward_per_step" in trial_metrics("staircase-on-shared")
