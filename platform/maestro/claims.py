"""Paper claims as data, checked over seeds with stratified bootstrap intervals (rliable).

A spec's `claims:` list states a paper's qualitative effects::

    claims:
      - name: randomist_below_ucb1
        metric: final_regret       # one value per seed and arm
        better: lower
        compare: [randomist, ucb1] # the arm that should win, the arm it should beat
        statistic: iqm             # or mean, median
        margin: 0.0                # optional: "not worse by more than margin x the loser's"

Two metrics of one arm compare with `loser_metric` (the passive member of a tandem returns
less than the active one)::

      - name: passive_below_active
        metric: active_return      # the winner's metric
        loser_metric: passive_return
        better: higher
        compare: [tandem, tandem]

`check_claim` computes the statistic of each arm over its seeds, and the difference
`d = stat(winner) - stat(loser)` (negated when lower is better, so d > 0 is the claimed
direction), plus `margin * |stat(loser)|` when a margin is given (the claim is then that
the winner is not worse than the loser by more than that fraction of the loser's
statistic), each with a 95% stratified bootstrap interval from `rliable` (Agarwal et al.,
"Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021). The verdict: the
interval of d above zero, `reproduced`; below zero, `contradicted`; containing zero,
`inconclusive`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Verdict = Literal["reproduced", "contradicted", "inconclusive"]
REPS = 2000  # bootstrap resamples: intervals stable to about 1% of their width
CONFIDENCE = 0.95


class Claim(BaseModel):
    """One claimed effect: `compare[0]` is better than `compare[1]` on `metric`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    metric: str
    better: Literal["higher", "lower"]
    compare: tuple[str, str]
    statistic: Literal["iqm", "mean", "median"] = "iqm"
    margin: float = Field(default=0.0, ge=0, description="tolerated fraction of the loser's")
    loser_metric: str | None = Field(
        default=None, description="the loser's metric when it is not `metric`"
    )

    @model_validator(mode="after")
    def _two_sides(self) -> Claim:
        same_metric = self.loser_metric in (None, self.metric)
        if not all(self.compare) or (self.compare[0] == self.compare[1] and same_metric):
            raise ValueError(
                "compare: name two different arms, [winner, loser] (or one arm twice, "
                "with a loser_metric)"
            )
        return self

    def metrics(self) -> tuple[str, str]:
        """The winner's metric and the loser's."""
        return self.metric, self.loser_metric or self.metric

    def sides(self) -> tuple[str, str]:
        """The two sides' names: the arms, or `arm:metric` when the metrics differ."""
        if self.loser_metric in (None, self.metric):
            return self.compare
        winner, loser = self.compare
        return f"{winner}:{self.metrics()[0]}", f"{loser}:{self.metrics()[1]}"


@dataclass(frozen=True)
class Estimate:
    """A statistic over seeds with its confidence interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class ClaimResult:
    """A checked claim: the statistic per arm, the oriented difference, the verdict."""

    name: str
    metric: str
    statistic: str
    better: str
    winner: str
    loser: str
    seeds: tuple[int, int]  # seeds of the winner, of the loser
    winner_estimate: Estimate
    loser_estimate: Estimate
    difference: Estimate  # > 0: the claimed direction
    verdict: Verdict
    margin: float = 0.0  # the claim's tolerance, a fraction of the loser's statistic

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClaimResult:
        """The inverse of `to_dict` (what `claims.json` holds)."""
        estimates = {
            key: Estimate(**data[key])
            for key in ("winner_estimate", "loser_estimate", "difference")
        }
        return cls(**{**data, **estimates, "seeds": tuple(data["seeds"])})

    def line(self) -> str:
        """One line for a terminal or a log."""
        margin = f" + {self.margin:g} x |{self.loser}|" if self.margin else ""
        return (
            f"{self.name}: {self.verdict} ({self.statistic} {self.metric}, {self.better} is "
            f"better: {self.winner} {self.winner_estimate} vs {self.loser} "
            f"{self.loser_estimate}; difference{margin} {self.difference}, "
            f"seeds {self.seeds[0]}+{self.seeds[1]})"
        )


def interquartile_mean(scores: np.ndarray) -> float:
    """rliable's IQM (scipy's 25% trimmed mean over all scores), without scipy's argument
    handling on every call, which was three quarters of a bootstrap's time. The sum over
    the count is `ndarray.mean`'s own arithmetic (the same float), without its Python
    wrapper: the bootstraps call this 24,000 times per three claims."""
    x = np.sort(scores, axis=None)
    cut = int(0.25 * x.size)
    kept = x[cut : x.size - cut]
    return float(kept.sum()) / kept.size


def statistic_function(name: str):
    """The rliable aggregate called `name`, over a (seeds x 1) score matrix."""
    from rliable import metrics

    return {
        "iqm": interquartile_mean,
        "mean": metrics.aggregate_mean,
        "median": metrics.aggregate_median,
    }[name]


def verdict(low: float, high: float) -> Verdict:
    """Where the interval of the oriented difference lies relative to zero."""
    if low > 0:
        return "reproduced"
    if high < 0:
        return "contradicted"
    return "inconclusive"


def check_claim(
    claim: Claim,
    scores: dict[str, np.ndarray],
    reps: int = REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> ClaimResult:
    """Check `claim` against `scores` (side -> one value per seed; the sides are the arms,
    or `Claim.sides`). Deterministic given `seed`. Raises KeyError naming a missing arm,
    ValueError for an arm with no seeds."""
    from rliable import library

    winner, loser = claim.sides()
    for arm in (winner, loser):
        if arm not in scores:
            raise KeyError(f"claim {claim.name}: no arm {arm!r} (have: {', '.join(scores)})")
        if len(scores[arm]) == 0:
            raise ValueError(f"claim {claim.name}: arm {arm!r} has no seeds")
    x = np.asarray(scores[winner], dtype=float).reshape(-1, 1)
    y = np.asarray(scores[loser], dtype=float).reshape(-1, 1)
    stat = statistic_function(claim.statistic)
    sign = 1.0 if claim.better == "higher" else -1.0

    def per_arm(s):
        return np.array([stat(s)])

    def oriented_difference(a, b):
        loser_stat = stat(b)
        return np.array([sign * (stat(a) - loser_stat) + claim.margin * abs(loser_stat)])

    # rliable resamples with numpy's global generator: seed it, then put it back.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates(
            {winner: x, loser: y}, per_arm, reps=reps, confidence_interval_size=confidence
        )
        # The two arms resampled independently (their seeds are not paired).
        point, interval = library.get_interval_estimates(
            {"difference": [x, y]},
            oriented_difference,
            reps=reps,
            confidence_interval_size=confidence,
        )
    finally:
        np.random.set_state(saved)
    points.update(point)
    intervals.update(interval)

    def estimate(key: str) -> Estimate:
        return Estimate(
            float(points[key][0]), float(intervals[key][0][0]), float(intervals[key][1][0])
        )

    difference = estimate("difference")
    return ClaimResult(
        name=claim.name,
        metric=" vs ".join(dict.fromkeys(claim.metrics())),
        statistic=claim.statistic,
        better=claim.better,
        winner=winner,
        loser=loser,
        margin=claim.margin,
        seeds=(len(x), len(y)),
        winner_estimate=estimate(winner),
        loser_estimate=estimate(loser),
        difference=difference,
        verdict=verdict(difference.low, difference.high),
    )


def check_claims(
    claims: list[Claim], seed_scores: dict[str, dict[str, np.ndarray]]
) -> list[ClaimResult]:
    """Check every claim against `seed_scores` (metric -> arm -> one value per seed)."""
    results = []
    for claim in claims:
        sides = zip(claim.sides(), claim.compare, claim.metrics(), strict=True)
        scores = {
            side: seed_scores[metric][arm]
            for side, arm, metric in sides
            if arm in seed_scores[metric]
        }
        results.append(check_claim(claim, scores))
    return results


def log_claims(tracker, results: list[ClaimResult]) -> None:
    """Record checked claims in the run: `claims.json`, a tag `maestro.claim.<name>` with
    the verdict, and `claim/<name>/difference` with its interval as metrics."""
    if not results:
        return
    tracker.log_dict([result.to_dict() for result in results], "claims.json")
    tracker.set_tags({f"maestro.claim.{r.name}": r.verdict for r in results})
    metrics = {}
    for r in results:
        metrics[f"claim/{r.name}/difference"] = r.difference.value
        metrics[f"claim/{r.name}/difference_low"] = r.difference.low
        metrics[f"claim/{r.name}/difference_high"] = r.difference.high
    tracker.log_metrics(metrics, step=0, flush=True)
