"""MAGE (maestro.methods.mage): double backprop is real, w_g = 0 is Dyna-TD3 exactly, the
dynamics ensemble learns, and a whole run through `maestro run` logs what the docs say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from maestro.envs.control_tasks import control_task
from maestro.methods.mage import losses
from maestro.methods.mage.config import MageConfig
from maestro.methods.mage.train import MageLearner

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes) -> MageConfig:
    data = {
        "imagined_batch": 8,
        "td3": {"hidden": [6]},
        "model": {"ensemble_size": 2, "hidden": [5], "batches": 4, "batch_size": 16},
        "loop": {"env": "Pendulum-v1", "env_steps": 600, "warmup_steps": 200, "eval_every": 200,
                 "eval_episodes": 1},
    }  # fmt: skip
    return MageConfig.model_validate({**data, **changes})


def test_the_gradient_term_is_the_finite_difference_of_the_action_gradient_norm():
    """d/d theta of Huber(|grad_a delta|) by double backprop equals central differences of
    the term itself, computed in float64 with the same random draws."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        learner = MageLearner(tiny_config(), control_task("Pendulum-v1"))
        obs = torch.randn(8, 3)

        def term() -> torch.Tensor:
            torch.manual_seed(1)  # the same model samples and target noise every call
            loss, _ = losses.critic_loss(
                learner.td3, learner.model, learner.task, obs, learner.action_scale, 0.0, 1.0
            )
            return loss

        weights = learner.td3.critic.q1[0].weight
        (analytic,) = torch.autograd.grad(term(), weights)
        h = 1e-6

        def shifted(i: int, j: int, by: float) -> float:
            with torch.no_grad():
                weights[i, j] += by
            value = term().item()
            with torch.no_grad():
                weights[i, j] -= by
            return value

        for i, j in ((0, 0), (2, 1), (5, 3)):
            numeric = (shifted(i, j, h) - shifted(i, j, -h)) / (2 * h)
            assert analytic[i, j].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)
        assert analytic.abs().max() > 0  # the term depends on the critic's weights
    finally:
        torch.set_default_dtype(torch.float32)


def test_with_w_g_zero_the_mage_update_is_the_dyna_td3_update():
    """MAGE's update with w_g = 0 moves every weight exactly as TD3's own update on the
    same imagined transitions (same model samples, same target noise)."""
    task = control_task("Pendulum-v1")
    torch.manual_seed(0)
    mage = MageLearner(tiny_config(w_g=0.0), task)
    torch.manual_seed(0)
    dyna = MageLearner(tiny_config(w_g=0.0), task)
    obs = torch.randn(8, 3)
    for update in range(3):  # the second moves the actor and the targets too
        torch.manual_seed(10 + update)
        mage.imagined_update(obs)
        torch.manual_seed(10 + update)
        with torch.no_grad():
            action = dyna.td3.actor(obs)
            next_obs = dyna.model.sample_next(obs, action)
            batch = {
                "obs": obs,
                "action": action,
                "reward": task.reward(obs, action * dyna.action_scale, next_obs),
                "next_obs": next_obs,
                "terminated": task.terminated(next_obs),
            }
        dyna.td3.update(batch)
    for part in ("actor", "critic", "actor_target", "critic_target"):
        for a, b in zip(
            getattr(mage.td3, part).parameters(), getattr(dyna.td3, part).parameters(), strict=True
        ):
            assert torch.equal(a, b), part
    assert mage.td3.updates == dyna.td3.updates == 3


def test_the_ensemble_learns_pendulums_dynamics():
    """After training on random transitions each member's likelihood has risen, and an
    imagined s' is nearer the real one than s is."""
    from maestro.rl.off_policy import ControlLoop

    torch.manual_seed(0)
    model = {"ensemble_size": 2, "hidden": [64, 64], "batches": 200, "batch_size": 64, "lr": 1e-3}
    cfg = tiny_config(model=model)
    learner = MageLearner(cfg, control_task("Pendulum-v1"))
    loop = ControlLoop(
        cfg.loop.model_copy(update={"env_steps": 400, "warmup_steps": 400}), learner, 0
    )
    loop.run(lambda loop: {}, lambda m, s: None, lambda s: None)
    buffer = loop.buffer
    before = learner.train_model(buffer, loop.rng)
    learner.train_model(buffer, loop.rng)
    after = learner.train_model(buffer, loop.rng)
    for i in range(2):
        assert after[f"model/nll/{i}"] < before[f"model/nll/{i}"]
    obs, action, real = (
        torch.from_numpy(getattr(buffer, n)[:400]) for n in ("obs", "action", "next_obs")
    )
    with torch.no_grad():
        imagined = learner.model.sample_next(obs, action)
    assert (imagined - real).norm(dim=-1).mean() < 0.5 * (obs - real).norm(dim=-1).mean()


def test_mage_run_end_to_end(tmp_path, mlflow_server):
    """Three arms, two seeds, tiny budget, through `maestro run` on Ray and MLflow: the
    trials log evaluation return against env steps with their losses, the parent the
    per-arm curves with bands, the plot and the claims."""
    spec = yaml.safe_load((ROOT / "jobs/mage/pendulum.yaml").read_text())
    spec["config"] = tiny_config().model_dump(mode="json")
    spec["trials"]["seeds"] = 2
    spec.pop("presets")
    spec["tracking"]["run_name"] = "mage"
    path = tmp_path / "mage.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MAESTRO_STORE": str(tmp_path / "store"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", str(path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "claim mage_above_dyna_td3_early:" in done.stdout

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("mage").experiment_id
    (parent,) = client.search_runs([experiment], "attributes.run_name = 'mage'")
    history = client.get_metric_history(parent.info.run_id, "eval_return/mage")
    assert [point.step for point in history] == [200, 400, 600]
    assert "eval_return_band/td3" in parent.data.metrics
    assert parent.data.tags["maestro.claim.mage_above_dyna_td3_final"] in (
        "reproduced", "contradicted", "inconclusive"
    )  # fmt: skip
    assert "plots/eval_return.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {child.info.run_name: child for child in children}
    assert len(by_name) == 6
    mage, dyna, td3 = (by_name[f"{arm}-seed0"].data.metrics for arm in ("mage", "dyna_td3", "td3"))
    for metrics in (mage, dyna, td3):
        assert -2000 < metrics["eval/return"] < 0 and metrics["critic/td_loss"] >= 0
    assert mage["critic/grad_loss"] >= 0 and "critic/grad_loss" not in dyna
    assert {"model/nll/0", "model/nll/1"} <= set(mage) and "model/nll/0" not in td3
    assert mage["critic/grad_a_q_norm"] > 0
    steps = client.get_metric_history(by_name["mage-seed0"].info.run_id, "eval/return")
    assert [point.step for point in steps] == [200, 400, 600]
