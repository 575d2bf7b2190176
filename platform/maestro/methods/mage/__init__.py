"""MAGE: learning the action-value gradient.

D'Oro, Jaskowski, "How to Learn a Useful Critic? Model-based Action-Gradient-Estimator
Policy Optimization", NeurIPS 2020 (arXiv:2004.14309); what Maestro runs of it, the
settings and their sources: `docs/methods/mage.md`.

A deterministic actor climbs grad_a Q, so the critic's action gradient is what the policy
learns from, yet TD learning only fits Q's values. MAGE trains TD3 on imagined one-step
transitions from a learned dynamics ensemble and a known differentiable reward, and adds
to the critic's loss the norm of the TD error's action gradient, obtained by double
backprop through the model (`losses.py`). Arms: MAGE (w_g 5), Dyna-TD3 (the same with
w_g 0) and model-free TD3.

Files: `config.py` (the spec's config, the official code's defaults), `model.py` (the
Gaussian ensemble), `losses.py` (model NLL, MAGE's critic loss), `train.py` (the learner
and its per-step update). Shared machinery: `maestro.rl.td3`, `maestro.rl.off_policy` (the
interaction loop, evaluation, checkpoints), `maestro.envs.control_tasks` (the rewards).
A trial is one arm on one seed: it logs evaluation return against env steps with its
losses, checkpoints its whole state, and stores its evaluation curve; `aggregate` plots
each arm's mean curve with a 95% band.
"""

from __future__ import annotations

import numpy as np
import torch

from maestro.envs.control_tasks import control_task
from maestro.methods import Method
from maestro.methods.mage.config import MageConfig
from maestro.methods.mage.train import MageLearner
from maestro.rl.off_policy import ControlLoop
from maestro.tracking import step_axis

CURVE = "eval_return.npy"


def trial(ctx) -> dict[str, float]:
    """One arm on one seed: interact for `loop.env_steps`, learning after every step."""
    cfg: MageConfig = ctx.config
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device is cuda, but this trial sees no GPU (set trials.gpus)")
    torch.manual_seed(ctx.seed)
    torch.set_num_threads(1)  # one core per trial: trials run side by side
    learner = MageLearner(cfg, control_task(cfg.loop.env))
    loop = ControlLoop(cfg.loop, learner, ctx.seed)
    saved = ctx.restore()
    if saved:
        loop.load(saved)
    final = loop.run(
        learner.update,
        ctx.log,
        lambda step: ctx.checkpoint(loop.state(), step),
        progress=ctx.progress(cfg.loop.env_steps - loop.env_steps, "env steps", "step"),
    )
    ctx.store.put_array(ctx.key(CURVE), np.array(loop.evaluations))
    return final


def aggregate(ctx, results) -> None:
    """Each arm's mean evaluation return with a 95% band over seeds: `eval_return/<arm>`
    and `eval_return_band/<arm>` on the parent run, and a plot."""
    from maestro.report import mean_band  # the driver's module: trials never import it

    cfg: MageConfig = ctx.config
    curves: dict[str, list[np.ndarray]] = {}
    for result in results:
        curves.setdefault(result.arm, []).append(ctx.store.get_array(f"{result.prefix}/{CURVE}"))
    runs = {arm: np.stack(arm_curves) for arm, arm_curves in curves.items()}
    steps = cfg.loop.eval_every * np.arange(1, min(r.shape[1] for r in runs.values()) + 1)
    for i, step in enumerate(steps):
        row = {}
        for arm, values in runs.items():
            mean, half, _ = mean_band(values[:, i])
            row[f"eval_return/{arm}"], row[f"eval_return_band/{arm}"] = mean, half
        ctx.tracker.log_metrics(row, step=int(step))
    ctx.tracker.flush()
    ctx.save_plot(plot_returns(runs, steps, cfg.loop.env), "eval_return")


def plot_returns(runs: dict[str, np.ndarray], steps: np.ndarray, env: str):
    """Mean evaluation return over seeds with a 95% band, one line per arm."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from maestro.report import plot_band

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for index, (arm, values) in enumerate(runs.items()):
        seeds = [list(zip(steps.tolist(), run.tolist(), strict=False)) for run in values]
        plot_band(axis, seeds, colormaps["tab10"](index % 10), f"{arm} ({len(values)} seeds)")
    step_axis(axis, "env steps")
    axis.set_ylabel("evaluation return")
    axis.set_title(f"MAGE on {env}")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


METHOD = Method(
    name="mage",
    config=MageConfig,
    trial=trial,
    metrics=("final_return", "mean_return"),
    step="env_steps",
    aggregate=aggregate,
)
