"""The paper's workflow through `maestro run`, on real NLE, the embedding judge and RLlib:
an agent trained on the score alone (`jobs/motif/score_agent.yaml`), a dataset collected by
its checkpoint and annotated once (`jobs/motif/annotate.yaml`), and a task run that trains on
that reward model (`reward_model_from`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from maestro.rl.training import stored_agent
from maestro.store import LocalStore

from .conftest import REPO

JOBS = REPO / "jobs" / "motif"
SMALL = {  # every step as small as still makes sense
    "config.collect.num_shards": 2,
    "config.collect.max_episode_steps": 300,
    "config.pairs.num_draws": 600,
    "config.train.algorithm": "ppo",
    "config.train.appo_loss": "rllib",  # an APPO setting; PPO has RLlib's loss
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


def test_a_reward_only_experiment_learns_one_reward_model_per_arm_and_seed(workdir):
    """`jobs/motif/steering.yaml`: without `train`, prepare makes a reward model for each
    arm (goal) and seed, sharing each seed's dataset between the arms, and each trial
    reports the probe rewards of its own model."""
    from maestro.methods.motif.stages import probe_rewards

    out = maestro_run(
        "steering.yaml",
        workdir,
        "trials.seeds=2",
        # Enough random play that gold and combat captions occur in every seed's dataset.
        "config.collect.num_shards=8",
        "config.collect.max_episode_steps=1000",
        "tracking.run_name=steering-small",
    )
    assert "claim a_gold_goal_pays_more_for_gold:" in out
    folder = workdir / "maestro-store" / "runs" / "motif" / "steering-small"
    assert len(list(folder.glob("dataset-*"))) == 2  # one per seed, shared by the goals
    assert len(list(folder.glob("preferences-*"))) == 4
    models = sorted(folder.glob("reward_model-*/model.pt"))
    assert len(models) == 4 and len({m.read_bytes() for m in models}) == 4

    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("motif-steering").experiment_id
    (parent,) = client.search_runs([experiment], "tags.mlflow.runName = 'steering-small'")
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((t.data.tags["arm"], t.data.tags["seed"]) for t in trials) == [
        (arm, seed) for arm in ("combat", "gold") for seed in ("0", "1")
    ]
    # A trial's figures are its own reward model's, measured on its seed's dataset.
    store = LocalStore(workdir / "maestro-store")
    prepared = store.get_json("runs/motif/steering-small/prepared.json")  # gold, seed 0
    expected = probe_rewards(store, prepared["dataset"], prepared["reward_model"])
    (first,) = [t for t in trials if (t.data.tags["arm"], t.data.tags["seed"]) == ("gold", "0")]
    for name, value in expected.items():
        assert first.data.metrics[name] == pytest.approx(value)
    assert parent.data.tags["maestro.claim.a_gold_goal_pays_more_for_gold"] in (
        "reproduced",
        "contradicted",
        "inconclusive",
    )
