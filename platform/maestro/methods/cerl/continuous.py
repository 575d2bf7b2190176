"""CERL's continuous variant (the spec's method `cerl_continuous`): an ensemble of N SAC
members (`maestro.rl.sac`) sharing one replay buffer, one member acting per episode.

With CERL each member's twin critic ends in one output per member: head (i, i) is member
i's own Q (what its actor climbs and its targets read), head (i, j) regresses member j's
soft target y_j = r + gamma (1 - d) (min Q_j^target(s', a'_j) - alpha_j log pi_j(a'_j|s')).
A member's critic loss is SAC's squared loss on its own head plus `aux_weight` times the
Huber loss (delta `huber_delta`, 10) of each other head against its member's target.
Without CERL the critics have one head and the members are N independent SAC learners on
shared data. The interaction loop is `maestro.rl.off_policy.ControlLoop`; the acting member
of an episode is a function of (seed, episode number), so a resumed trial draws the same.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from maestro.envs.control_tasks import control_task
from maestro.methods import Method
from maestro.rl.networks import (
    apply_gradients,
    frozen_copy,
    load_parts,
    make_optimizer,
    mlp,
    parts_to_bytes,
    soft_update,
)
from maestro.rl.off_policy import ControlLoop, OffPolicyConfig, evaluate
from maestro.rl.sac import GaussianActor, SACConfig, actor_loss, alpha_loss, soft_target


class ContinuousConfig(BaseModel):
    """The spec's `config:` block for `cerl_continuous`."""

    model_config = ConfigDict(extra="forbid")

    members: int = Field(default=5, ge=1, description="N; 1 is a single SAC agent")
    cerl: bool = False
    aux_weight: float = Field(default=1.0, ge=0, description="weight of the heads (i, j != i)")
    huber_delta: float = Field(default=10.0, gt=0)
    loop: OffPolicyConfig = Field(default_factory=lambda: OffPolicyConfig(env="HalfCheetah-v5"))
    sac: SACConfig = Field(default_factory=SACConfig)
    device: str = "cpu"


def acting_member(seed: int, episode: int, members: int) -> int:
    """The member that acts in `episode`: uniform, drawn from (seed, episode)."""
    sequence = np.random.SeedSequence([seed, 2, episode])
    return int(np.random.default_rng(sequence).integers(members))


class MultiHeadTwinCritic(nn.Module):
    """Two Q networks, each with `heads` outputs: `forward` -> (q1, q2), each (batch, heads)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig, heads: int):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, cfg.hidden, heads, cfg.activation)
        self.q2 = mlp(obs_dim + action_dim, cfg.hidden, heads, cfg.activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x), self.q2(x)


class OwnHead(nn.Module):
    """One head of a `MultiHeadTwinCritic` as a twin critic (what `maestro.rl.sac`'s losses
    take)."""

    def __init__(self, critic: MultiHeadTwinCritic, head: int):
        super().__init__()
        self.critic, self.head = critic, head

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q1, q2 = self.critic(obs, action)
        return q1[:, self.head], q2[:, self.head]


def cerl_critic_loss(
    q1: torch.Tensor,
    q2: torch.Tensor,
    y: torch.Tensor,
    own: int,
    aux_weight: float,
    huber_delta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Member `own`'s critic loss for its heads' values `q1`, `q2` (batch, heads) against the
    members' targets `y` (members, batch): SAC's squared loss on its own head, and
    `aux_weight` x Huber(delta) on each other head against that member's target."""
    loss = 0.5 * (((q1[:, own] - y[own]) ** 2).mean() + ((q2[:, own] - y[own]) ** 2).mean())
    metrics = {"critic/td_loss": loss.item()}
    others = [j for j in range(q1.shape[1]) if j != own]
    if others:
        goal = y[others].T
        aux = 0.5 * (
            F.huber_loss(q1[:, others], goal, delta=huber_delta, reduction="none").mean(0).sum()
            + F.huber_loss(q2[:, others], goal, delta=huber_delta, reduction="none").mean(0).sum()
        )
        loss = loss + aux_weight * aux
        metrics["critic/other_heads_loss"] = aux.item() / len(others)
    return loss, metrics


class Member:
    """One SAC member: actor, multi-head critic, its target, temperature, optimisers."""

    PARTS = ("actor", "critic", "critic_target", "actor_optimizer", "critic_optimizer",
             "alpha_optimizer")  # fmt: skip

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig, heads: int, index: int,
                 device: str):  # fmt: skip
        self.index = index
        self.own = index if heads > 1 else 0
        self.actor = GaussianActor(obs_dim, action_dim, cfg).to(device)
        self.critic = MultiHeadTwinCritic(obs_dim, action_dim, cfg, heads).to(device)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = torch.tensor(float(np.log(cfg.initial_alpha)), device=device,
                                      requires_grad=True)  # fmt: skip
        self.actor_optimizer = make_optimizer(self.actor.parameters(), cfg.optimizer, cfg.actor_lr)
        self.critic_optimizer = make_optimizer(
            self.critic.parameters(), cfg.optimizer, cfg.critic_lr
        )
        self.alpha_optimizer = make_optimizer([self.log_alpha], cfg.optimizer, cfg.alpha_lr)


class EnsembleSAC:
    """N SAC members on shared data; `acting` is the member whose actor acts."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: ContinuousConfig):
        self.cfg, self.device = cfg.sac, cfg.device
        self.config = cfg
        heads = cfg.members if cfg.cerl else 1
        self.members = [
            Member(obs_dim, action_dim, cfg.sac, heads, i, cfg.device) for i in range(cfg.members)
        ]
        self.target_entropy = (
            -float(action_dim) if cfg.sac.target_entropy is None else cfg.sac.target_entropy
        )
        self.acting = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The acting member's sampled action (`rng` given), or its mode."""
        actor = self.members[self.acting].actor
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = actor(obs_t)[0] if rng is not None else actor.mode(obs_t)
        return action.cpu().numpy().astype(np.float32)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAC update of every member on `batch`, each critic head against its
        member's target."""
        obs, action = batch["obs"], batch["action"]
        alphas = [m.log_alpha.detach().exp() for m in self.members]
        with torch.no_grad():
            y = torch.stack([
                soft_target(m.actor, OwnHead(m.critic_target, m.own), batch["reward"],
                            batch["next_obs"], batch["terminated"], alpha, self.cfg.gamma)
                for m, alpha in zip(self.members, alphas, strict=True)
            ])  # fmt: skip
        metrics: dict[str, list[float]] = {}
        for m, alpha in zip(self.members, alphas, strict=True):
            q1, q2 = m.critic(obs, action)
            own = m.own if q1.shape[1] > 1 else 0
            targets = y if q1.shape[1] > 1 else y[m.index : m.index + 1]
            loss, critic_metrics = cerl_critic_loss(
                q1, q2, targets, own, self.config.aux_weight, self.config.huber_delta
            )
            apply_gradients(loss, m.critic_optimizer, None)
            m.critic.requires_grad_(False)
            loss, log_prob, actor_metrics = actor_loss(m.actor, OwnHead(m.critic, m.own), obs,
                                                       alpha)  # fmt: skip
            apply_gradients(loss, m.actor_optimizer, None)
            m.critic.requires_grad_(True)
            loss, alpha_metrics = alpha_loss(m.log_alpha, log_prob, self.target_entropy)
            apply_gradients(loss, m.alpha_optimizer, None)
            soft_update(m.critic_target, m.critic, self.cfg.tau)
            for name, value in {**critic_metrics, **actor_metrics, **alpha_metrics}.items():
                metrics.setdefault(name, []).append(value)
        return {name: float(np.mean(values)) for name, values in metrics.items()}

    def to_bytes(self) -> bytes:
        return parts_to_bytes(
            self, (), members=[
                {**{p: getattr(m, p).state_dict() for p in Member.PARTS},
                 "log_alpha": m.log_alpha.detach()}
                for m in self.members
            ],
        )  # fmt: skip

    def load_bytes(self, data: bytes) -> None:
        saved = load_parts(self, (), data, self.device)
        for m, parts in zip(self.members, saved["members"], strict=True):
            for p in Member.PARTS:
                getattr(m, p).load_state_dict(parts[p])
            with torch.no_grad():
                m.log_alpha.copy_(parts["log_alpha"])


def trial(ctx) -> dict[str, float]:
    """One arm on one seed: the ensemble interacts for `loop.env_steps`; every member is
    evaluated at the end."""
    cfg: ContinuousConfig = ctx.config
    torch.manual_seed(ctx.seed)
    torch.set_num_threads(1)
    task = control_task(cfg.loop.env)
    probe = task.make(ctx.seed)
    obs_dim, action_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    learner = EnsembleSAC(obs_dim, action_dim, cfg)
    loop = ControlLoop(cfg.loop, learner, ctx.seed)
    saved = ctx.restore()
    if saved:
        loop.load(saved)
    member_of = np.zeros(loop.buffer.capacity, np.int64)  # who acted, per buffer position
    if saved:
        member_of[:] = np.frombuffer(saved["member_of"], np.int64)

    def start(episode: int) -> None:
        learner.acting = acting_member(ctx.seed, episode, cfg.members)

    def update(loop: ControlLoop) -> dict[str, float]:
        member_of[(loop.buffer.position - 1) % loop.buffer.capacity] = learner.acting
        if loop.exploring:
            return {}
        metrics: dict[str, float] = {}
        for _ in range(cfg.loop.updates_per_step):
            index = loop.rng.integers(0, loop.buffer.size, size=cfg.sac.batch_size)
            metrics.update(learner.update(loop.buffer.batch(index, cfg.device)))
            for i in range(cfg.members):
                metrics[f"data/self_share/{i}"] = float(np.mean(member_of[index] == i))
        return metrics

    loop.run(
        update,
        ctx.log,
        lambda step: ctx.checkpoint({**loop.state(), "member_of": member_of.tobytes()}, step),
        progress=ctx.progress(cfg.loop.env_steps - loop.env_steps, "env steps", "step"),
        episode_start=start,
    )
    returns = []
    for i in range(cfg.members):
        learner.acting = i
        returns.append(float(np.mean(evaluate(task, learner, cfg.loop.eval_episodes, ctx.seed))))
    return {"member_return": float(np.mean(returns)), "final_return": loop.evaluations[-1]}


METHOD = Method(
    name="cerl_continuous",
    config=ContinuousConfig,
    trial=trial,
    metrics=("member_return", "final_return"),
    step="env_steps",
)
