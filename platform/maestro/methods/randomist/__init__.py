"""RANDOMIST: policy optimisation as online learning with mediator feedback.

Metelli, Papini, D'Oro, Restelli, "Policy Optimization as Online Learning with Mediator
Feedback", AAAI 2021 (arXiv:2012.08225); what Maestro runs of it: `docs/methods/randomist.md`.

Arms are K Gaussian hyperpolicies nu_k = N(mu_k, sigma^2) over the gain of a linear policy
on the 1-D LQG (`maestro.envs.lqg`). Each round the learner picks an arm, samples a gain
omega ~ nu_k, runs one episode and observes (omega, reward). Because omega is observed
(mediator feedback), every sample informs every arm through multiple importance sampling
with the balance heuristic:

    w_j(s) = nu_j(omega_s) / sum_k (n_k / t) nu_k(omega_s)
    mu_j   = (1/t) sum_s min(w_j(s), M_j) R_s,        M_j = sqrt(d2_j t / (alpha log t))

where d2_j bounds the exponentiated 2-Renyi divergence of nu_j to the mixture (harmonic
mean of the closed-form pairwise Gaussian divergences) and ESS_j = t / d2_j.

Algorithms (each index is maximised every round):
- `randomist`: perturbed history on the MIS estimate: ceil(a ESS) Binomial(1/2)
  pseudo-rewards, plus the truncation-bias term sqrt(alpha log t / ESS).
- `optimist`: MIS estimate + sqrt(alpha log t / ESS) (the paper's constant sqrt(2) + 4/3
  folded into `exploration`).
- `ucb1`: each arm's own mean + sqrt(2 log t / n).
- `phe`: perturbed history without importance sampling (own samples only).
- `thompson`: Gaussian Thompson sampling on each arm's own samples.

`exploration` scales each algorithm's exploration term (bonus, pseudo-reward ratio,
posterior width), so one number can be swept across algorithms.

Files: `config.py` (the spec's config), `estimators.py` (the MIS formulas above),
`bandit.py` (the loop and its state). Here: a trial is one algorithm on one seed (the
spec's arms set `algorithm`); it logs cumulative regret every `log_every` rounds and
checkpoints its whole state; `aggregate` plots mean regret with a 95% band per arm.
"""

from __future__ import annotations

import math

import numpy as np

from maestro.methods import Method
from maestro.methods.randomist.bandit import BanditState, arm_values, simulate
from maestro.methods.randomist.config import RandomistConfig
from maestro.tracking import figure_png, step_axis


def trial(ctx) -> dict[str, float]:
    """One algorithm on one seed: cumulative regret every `log_every` rounds, the whole
    state every `checkpoint_every` rounds (a restored trial goes on from it: under PBT,
    from the copied trial's history and regret), the curve stored at the end."""
    cfg: RandomistConfig = ctx.config
    values = arm_values(cfg)
    saved = ctx.restore()
    state = BanditState.from_checkpoint(cfg, saved) if saved else BanditState.start(cfg, ctx.seed)
    for regret in simulate(cfg, state, values):
        t = state.t
        if t % cfg.checkpoint_every == 0 and t < cfg.rounds:
            ctx.checkpoint(state.to_checkpoint())
        if t % cfg.log_every == 0 or t == cfg.rounds:
            ctx.log({"regret": regret}, step=t)
    ctx.store.put_array(ctx.key("regret.npy"), state.regret)
    return {"final_regret": float(state.regret[-1])}


def aggregate(ctx, results) -> None:
    """Mean cumulative regret per arm with a 95% band over seeds: `regret/<arm>` and
    `regret_band/<arm>` on the run, and the plot."""
    cfg: RandomistConfig = ctx.config
    curves = {}
    for result in results:
        curves.setdefault(result.arm, []).append(ctx.store.get_array(f"{result.prefix}/regret.npy"))
    curves = {arm: np.stack(runs) for arm, runs in curves.items()}
    rounds = min(runs.shape[1] for runs in curves.values())
    steps = list(range(cfg.log_every, rounds + 1, cfg.log_every))
    if steps[-1] != rounds:
        steps.append(rounds)
    for step in steps:
        row = {}
        for arm, runs in curves.items():
            mean, half = mean_and_band(runs[:, step - 1])
            row[f"regret/{arm}"] = mean
            row[f"regret_band/{arm}"] = half
        ctx.tracker.log_metrics(row, step=step)
    ctx.tracker.flush()
    figure = plot_regret(curves)
    ctx.tracker.log_figure(figure, "cumulative_regret")
    ctx.store.put_bytes(ctx.key("plots", "cumulative_regret.png"), figure_png(figure))


def mean_and_band(samples: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval."""
    samples = np.asarray(samples, dtype=float)
    half = 1.96 * samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else 0.0
    return float(samples.mean()), float(half)


def plot_regret(curves: dict[str, np.ndarray]):
    """Mean cumulative regret over seeds, with a 95% band, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arm, runs in curves.items():
        rounds = np.arange(1, runs.shape[1] + 1)
        mean = runs.mean(axis=0)
        half = 1.96 * runs.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0
        axis.plot(rounds, mean, label=arm)
        axis.fill_between(rounds, mean - half, mean + half, alpha=0.2)
    step_axis(axis, "round t")
    axis.set_ylabel("cumulative regret")
    axis.set_title(f"RANDOMIST on the 1-D LQG ({len(next(iter(curves.values())))} seeds)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


METHOD = Method(
    name="randomist",
    config=RandomistConfig,
    trial=trial,
    metrics=("final_regret",),
    step="rounds",
    aggregate=aggregate,
)
