"""Training the caption reward model on LLM preferences (Motif phase 2).

Bradley-Terry: P(caption 1 preferred) = sigmoid(r(c1) - r(c2)); the loss is the binary
cross-entropy against the label (1 -> 1, 2 -> 0, tie -> 0.5), each question weighted by the
number of draws it stands for, so the model fits Motif's dataset of draws with repeats.
Pairs of identical captions are ties (never asked). Invalid answers are not labels and are
left out. Questions are split into training and validation by a hash of their id, so a
question never lands on both sides and the split is the same on every rerun. Held-out
accuracy counts the non-tie validation draws whose order the model gets right.

Normalisation, as Motif: the mean and standard deviation of the reward over the captions of
the training pairs (both sides of every draw), and eps the `threshold_quantile` of the
normalised rewards of the distinct training captions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from maestro.feedback.reward_model import (
    CaptionRewardNet,
    Normalisation,
    RewardModel,
    RewardModelConfig,
)


class RewardTrainingConfig(BaseModel):
    """How the reward model is trained."""

    model_config = ConfigDict(extra="forbid")

    model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    threshold_quantile: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="eps: this quantile of the distinct training captions' normalised rewards",
    )


@dataclass
class PairData:
    """Labelled questions as parallel lists; targets are P(caption 1 preferred), weights the
    draws each question stands for."""

    caption_1: list[str]
    caption_2: list[str]
    target: np.ndarray
    question_id: list[str]
    weight: np.ndarray

    @classmethod
    def from_tables(cls, answers, questions) -> PairData:
        """The valid answers of a preference table and the identical-caption ties, weighted
        by the draw counts of the questions table (see preferences.py)."""
        counts = dict(
            zip(
                questions.column("question_id").to_pylist(),
                questions.column("count").to_pylist(),
                strict=True,
            )
        )
        rows = [r for r in answers.to_pylist() if r["valid"]]
        rows += [
            {**r, "label": 0} for r in questions.to_pylist() if r["caption_1"] == r["caption_2"]
        ]
        return cls(
            [r["caption_1"] for r in rows],
            [r["caption_2"] for r in rows],
            np.array([{1: 1.0, 2: 0.0, 0: 0.5}[r["label"]] for r in rows], dtype=np.float32),
            [r["question_id"] for r in rows],
            np.array([counts[r["question_id"]] for r in rows], dtype=np.float32),
        )

    def split(self, validation_fraction: float) -> tuple[PairData, PairData]:
        """Train/validation by a hash of the question id (stable across reruns)."""

        def held_out(qid: str) -> bool:
            digest = hashlib.sha256(qid.encode()).digest()
            return int.from_bytes(digest[:4], "big") / 2**32 < validation_fraction

        mask = np.array([held_out(q) for q in self.question_id], dtype=bool)
        return self.subset(~mask), self.subset(mask)

    def subset(self, mask: np.ndarray) -> PairData:
        index = np.flatnonzero(mask)
        return PairData(
            [self.caption_1[i] for i in index],
            [self.caption_2[i] for i in index],
            self.target[index],
            [self.question_id[i] for i in index],
            self.weight[index],
        )

    def __len__(self) -> int:
        return len(self.target)


def bradley_terry_loss(
    net: CaptionRewardNet,
    c1: list[str],
    c2: list[str],
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of sigmoid(r(c1) - r(c2)) against the soft label, averaged with
    `weight` (the draws each pair stands for; equal if None)."""
    rewards = net(c1 + c2)
    losses = F.binary_cross_entropy_with_logits(
        rewards[: len(c1)] - rewards[len(c1) :], target, reduction="none"
    )
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum()


def normalisation(model: RewardModel, data: PairData, quantile: float) -> Normalisation:
    """Mean and std of the raw reward over the captions of `data`'s draws (each side of each
    draw), and eps, the `quantile` of the distinct captions' normalised rewards. The model
    runs once per distinct caption."""
    weights: dict[str, float] = {}
    for captions in (data.caption_1, data.caption_2):
        for caption, weight in zip(captions, data.weight.tolist(), strict=True):
            weights[caption] = weights.get(caption, 0.0) + weight
    distinct = list(weights)
    raw = model.raw(distinct)
    w = np.array([weights[c] for c in distinct])
    mean = float(np.average(raw, weights=w))
    std = float(np.sqrt(np.average((raw - mean) ** 2, weights=w))) or 1.0
    threshold = float(np.quantile((raw - mean) / std, quantile))
    return Normalisation(mean, std, threshold)


@torch.no_grad()
def evaluate(net: CaptionRewardNet, data: PairData) -> dict[str, float]:
    """Loss on all pairs; accuracy on the pairs with a strict preference."""
    if not len(data):
        return {"loss": float("nan"), "accuracy": float("nan")}
    net.eval()
    target, weight = torch.from_numpy(data.target), torch.from_numpy(data.weight)
    loss = bradley_terry_loss(net, data.caption_1, data.caption_2, target, weight).item()
    rewards = net(data.caption_1 + data.caption_2).numpy()
    margin = rewards[: len(data)] - rewards[len(data) :]
    strict = data.target != 0.5
    correct = (margin[strict] > 0) == (data.target[strict] == 1.0)
    accuracy = float(np.average(correct, weights=data.weight[strict])) if strict.any() else np.nan
    return {"loss": loss, "accuracy": float(accuracy)}


def train_reward_model(
    data: PairData,
    config: RewardTrainingConfig,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[RewardModel, dict[str, float]]:
    """Fit the model on the training split of `data`; normalise over its captions (see the
    module's docstring)."""
    if len(data) == 0:
        raise ValueError("no valid preference labels to train on")
    torch.manual_seed(seed)
    train, valid = data.split(config.validation_fraction)
    net = CaptionRewardNet(config.model)
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    rng = np.random.default_rng(seed)
    metrics: dict[str, float] = {}
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        net.train()
        order = rng.permutation(len(train))
        losses = []
        for i in range(0, len(order), config.batch_size):
            index = order[i : i + config.batch_size]
            loss = bradley_terry_loss(
                net,
                [train.caption_1[j] for j in index],
                [train.caption_2[j] for j in index],
                torch.from_numpy(train.target[index]),
                torch.from_numpy(train.weight[index]),
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        held_out = evaluate(net, valid)
        metrics = {
            "train_loss": float(np.mean(losses)),
            "train_accuracy": evaluate(net, train)["accuracy"],
            "val_loss": held_out["loss"],
            "val_accuracy": held_out["accuracy"],
            "pairs_per_s": len(train) / (time.perf_counter() - start),
        }
        if on_epoch:
            on_epoch(epoch, metrics)

    model = RewardModel(net, Normalisation(0.0, 1.0, 0.0))
    model.norm = normalisation(model, train, config.threshold_quantile)
    metrics.update(
        {
            "train_pairs": len(train),
            "train_draws": float(train.weight.sum()),
            "val_pairs": len(valid),
            "threshold": model.norm.threshold,
        }
    )
    return model, metrics
