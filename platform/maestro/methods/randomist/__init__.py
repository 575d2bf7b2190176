"""RANDOMIST: policy optimisation as online learning with mediator feedback.

Metelli, Papini, D'Oro, Restelli, "Policy Optimization as Online Learning with Mediator
Feedback", AAAI 2021 (arXiv:2012.08225); what Maestro runs of it, with the paper's settings
and where Maestro differs: `docs/methods/randomist.md`.

Arms are K Gaussian hyperpolicies nu_k = N(mu_k, sigma^2) over the gain of a linear policy
on the 1-D LQG (`maestro.envs.lqg`). Each round the learner picks an arm, samples a gain
omega ~ nu_k, runs one episode and observes (omega, return). Because omega is observed
(mediator feedback), every sample informs every arm through multiple importance sampling
with the balance heuristic:

    w_j(s) = nu_j(omega_s) / sum_k (n_k / t) nu_k(omega_s)
    mu_j   = (1/t) sum_s min(w_j(s), M_j) R_s,        M_j = sqrt(d2_j t / (alpha log t))

where d2_j bounds the exponentiated 2-Renyi divergence of nu_j to the mixture (harmonic
mean of the closed-form pairwise Gaussian divergences) and ESS_j = t / d2_j.

Algorithms (indices in `indices.py`, each maximised every round):
- `randomist`: mu + the mean of ceil(a ESS) Binomial(1/2) pseudo-rewards
  + sqrt(alpha log t / ESS) + sqrt(alpha d2 log t / t); a = 1.1, or 8.1 (the theory's).
- `optimist`: mu + (sqrt 2 + 1) sqrt(alpha d2 log t / t).
- `ucb1`: each arm's own mean + sqrt(alpha log t / (2 n)).
- `gpucb`: a GP over the arm means fitted to the returns: mean + sqrt(2 alpha log t) sd.
- `phe`: perturbed history on each arm's own returns, ceil(a n) pseudo-rewards (a = 2.1).
- `thompson`: a Gaussian draw per arm around its mean, width 1 / (n + 1).

Files: `config.py` (the spec's config), `estimators.py` (the MIS formulas above),
`indices.py` (the algorithms' indices), `bandit.py` (the loop and its state). Here: a trial
is one algorithm on one seed (the spec's arms set `algorithm`); it logs both cumulative
regrets every `log_every` rounds and checkpoints its whole state; `aggregate` plots mean
regret with a 95% band per arm.
"""

from __future__ import annotations

import math

import numpy as np

from maestro.methods import Method
from maestro.methods.randomist.bandit import BanditState, simulate
from maestro.methods.randomist.config import RandomistConfig
from maestro.tracking import step_axis

# Points per curve in a plot: a 7-inch plot has fewer pixels across, and each point drawn
# (with its band) is rendering time.
PLOT_POINTS = 1000


def trial(ctx) -> dict[str, float]:
    """One algorithm on one seed: both cumulative regrets every `log_every` rounds, the
    whole state every `checkpoint_every` rounds (a restored trial goes on from it: under
    PBT, from the copied trial's history and regret), the curves stored at the end."""
    cfg: RandomistConfig = ctx.config
    saved = ctx.restore()
    state = BanditState.from_checkpoint(cfg, saved) if saved else BanditState.start(cfg, ctx.seed)
    for regret in simulate(cfg, state):
        t = state.t
        if t % cfg.checkpoint_every == 0 and t < cfg.rounds:
            ctx.checkpoint(state.to_checkpoint(), step=t)
        if t % cfg.log_every == 0 or t == cfg.rounds:
            ctx.log({"regret": regret, "return_regret": state.return_regret[t - 1]}, step=t)
    ctx.store.put_array(ctx.key("regret.npy"), state.regret)
    ctx.store.put_array(ctx.key("return_regret.npy"), state.return_regret)
    return {
        "final_regret": float(state.regret[-1]),
        "final_return_regret": float(state.return_regret[-1]),
        "late_share": late_share(state.regret),
    }


def late_share(regret: np.ndarray) -> float:
    """The share of a cumulative regret curve's total incurred in its second half: 0 when
    the regret is constant, log 2 / log T when it grows as log t, 1 - 1/sqrt(2) as sqrt(t),
    1/2 when linear."""
    total = float(regret[-1])
    return (total - float(regret[len(regret) // 2 - 1])) / total if total > 0 else 0.0


def aggregate(ctx, results) -> None:
    """Mean cumulative regret per arm with a 95% band over seeds: `regret/<arm>` and
    `regret_band/<arm>` on the run, and a plot of each regret."""
    cfg: RandomistConfig = ctx.config
    curves = {name: per_arm_curves(ctx, results, name) for name in ("regret", "return_regret")}
    log_arm_means(ctx, "regret", curves["regret"], cfg.log_every)
    for name, label in (("regret", "expected regret"), ("return_regret", "regret (1 - J)")):
        ctx.save_plot(plot_regret(curves[name], f"cumulative {label}"), f"cumulative_{name}")


def per_arm_curves(ctx, results, name: str) -> dict[str, np.ndarray]:
    """Arm -> (seeds, rounds): the `<name>.npy` curve each trial stored."""
    curves: dict[str, list[np.ndarray]] = {}
    for result in results:
        curves.setdefault(result.arm, []).append(ctx.store.get_array(f"{result.prefix}/{name}.npy"))
    return {arm: np.stack(runs) for arm, runs in curves.items()}


def log_arm_means(ctx, name: str, curves: dict[str, np.ndarray], log_every: int) -> None:
    """`<name>/<arm>`, the mean over seeds of each arm's curves (seeds, steps), and
    `<name>_band/<arm>`, its 95% half-width, on the run every `log_every` steps and at the
    last."""
    from maestro.report import mean_band  # the driver's module: trials never import it

    last = min(runs.shape[1] for runs in curves.values())
    steps = list(range(log_every, last + 1, log_every))
    if not steps or steps[-1] != last:
        steps.append(last)
    for step in steps:
        row = {}
        for arm, runs in curves.items():
            mean, half, _ = mean_band(runs[:, step - 1])
            row[f"{name}/{arm}"], row[f"{name}_band/{arm}"] = mean, half
        ctx.tracker.log_metrics(row, step=step)
    ctx.tracker.flush()


def plotted_rounds(rounds: int) -> np.ndarray:
    """The rounds (from 1) a curve of `rounds` rounds is drawn at: all of them up to
    `PLOT_POINTS`, else that many evenly spaced, the first and the last among them."""
    return np.unique(np.linspace(1, rounds, min(rounds, PLOT_POINTS)).round().astype(int))


def plot_regret(curves: dict[str, np.ndarray], ylabel: str = "cumulative regret"):
    """Mean cumulative regret over seeds, with a 95% band, one line per arm (drawn at
    `plotted_rounds`). A matplotlib `Figure` of its own: no pyplot, nothing to close."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for arm, runs in curves.items():
        rounds = plotted_rounds(runs.shape[1])
        runs = runs[:, rounds - 1]
        mean = runs.mean(axis=0)
        half = 1.96 * runs.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0
        axis.plot(rounds, mean, label=arm)
        axis.fill_between(rounds, mean - half, mean + half, alpha=0.2)
    step_axis(axis, "round t")
    axis.set_ylabel(ylabel)
    axis.set_title(f"RANDOMIST on the 1-D LQG ({len(next(iter(curves.values())))} seeds)")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


METHOD = Method(
    name="randomist",
    config=RandomistConfig,
    trial=trial,
    metrics=("final_regret", "final_return_regret", "late_share"),
    step="rounds",
    aggregate=aggregate,
)
