"""CERL: the curse of diversity in data-sharing ensembles, and cross-ensemble representation
learning.

Lin, D'Oro, Nikishin, Courville, "The Curse of Diversity in Ensemble-Based Exploration",
ICLR 2024 (arXiv:2405.04342); what Maestro runs of it and its settings:
`docs/methods/cerl.md`.

N Double-DQN members share one replay buffer; one member, drawn per episode, acts. Each
member learns mostly from the others' data, and the paper finds the members return less
than a single agent given the same env steps (the curse of diversity). The p%-tandem
isolates the cause: the active member acts in p% of the episodes, the passive one learns
from the same data. CERL gives each member a head per member, head (i, j) regressing
member j's target, so every member's representation is shaped by all members' value
functions (`losses.py`).

Files: `config.py`, `model.py` (the members' networks), `losses.py` (Double-DQN targets,
the N x N head loss), `train.py` (the learner, the shared buffer, the interaction loop with
evaluation and checkpoints). Environment: `maestro.envs.minatar`. A trial is one arm on
one seed; it logs evaluation returns (each member, the members' mean, a random member per
episode, the majority vote) and each member's share of self-generated data against env
steps; `aggregate` plots the arms' curves with 95% bands.
"""

from __future__ import annotations

import torch

from maestro.methods import Method
from maestro.methods.cerl.config import CerlConfig
from maestro.methods.cerl.train import EnsembleLoop
from maestro.tracking import step_axis

CURVES = "eval_curves.json"
PLOTTED = ("eval/member_mean", "eval/vote")


def trial(ctx) -> dict[str, float]:
    """One arm on one seed: interact for `env_steps`, learning as configured."""
    cfg: CerlConfig = ctx.config
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device is cuda, but this trial sees no GPU (set trials.gpus)")
    torch.set_num_threads(1)  # one core per trial: trials run side by side
    loop = EnsembleLoop(cfg, ctx.seed)
    saved = ctx.restore()
    if saved:
        loop.load(saved)
    final = loop.run(
        ctx.log,
        lambda step: ctx.checkpoint(loop.state(), step),
        progress=ctx.progress(cfg.env_steps - loop.env_steps, "env steps", "step"),
    )
    ctx.store.put_json(ctx.key(CURVES), loop.evaluations)
    return final


def aggregate(ctx, results) -> None:
    """Each arm's members' mean return and majority-vote return over env steps, with 95%
    bands over seeds: `plots/eval_return.png`."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from maestro.report import plot_band

    cfg: CerlConfig = ctx.config
    curves: dict[str, list[list[dict]]] = {}
    for result in results:
        curves.setdefault(result.arm, []).append(ctx.store.get_json(f"{result.prefix}/{CURVES}"))
    figure = Figure(figsize=(11, 4.5))
    axes = figure.subplots(1, len(PLOTTED), sharey=True)
    for axis, metric in zip(axes, PLOTTED, strict=True):
        for index, (arm, runs) in enumerate(curves.items()):
            seeds = [
                [(cfg.eval_every * (k + 1), e[metric]) for k, e in enumerate(run)] for run in runs
            ]
            plot_band(axis, seeds, colormaps["tab10"](index % 10), f"{arm} ({len(runs)} seeds)")
        step_axis(axis, "env steps")
        axis.set_title(metric.removeprefix("eval/").replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("evaluation return")
    axes[0].legend()
    figure.suptitle(f"CERL on MinAtar {cfg.env}")
    ctx.save_plot(figure, "eval_return")


METHOD = Method(
    name="cerl",
    config=CerlConfig,
    trial=trial,
    metrics=(
        "member_return",
        "vote_return",
        "random_member_return",
        "active_return",
        "passive_return",
    ),  # fmt: skip
    step="env_steps",
    aggregate=aggregate,
)
