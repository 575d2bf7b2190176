"""TD3 updates per second: the platform's TD3 (`maestro run` of the `td3` arm of
`jobs/mage/pendulum.yaml`) against a plain single-file TD3 on the same task, in the same run.

The plain side is written here: actor, twin critic, the TD3 update (target smoothing
noise, clipped double Q, delayed actor step and Polyak targets, Adam) and a loop on
gymnasium's Pendulum-v1: uniform random actions for the warm-up, then the actor's with
Gaussian exploration noise, transitions in numpy arrays, one update per env step, nothing
else (no evaluation, tracking, checkpoints or Ray). Its rate is the learning phase's (after
the warm-up) updates over wall seconds; it runs before and after the platform run, and
the mean of the two is the reference, which cancels a machine's drift.

The platform side is a whole `maestro run` (subprocess: Ray Tune trial, MLflow tracking
to sqlite, checkpoints) of the spec with the `td3` arm only, one seed, one update per env
step, the same TD3 (the paper's settings, as here, and the same hidden sizes, rather than
the spec's MAGE ones), 5 evaluation episodes every `--eval-every` env steps and a
checkpoint every 2000. Its rate is read back from MLflow: the trial logs
`perf/env_steps_per_s` at each evaluation, over the `eval_every` env steps before it, and
the windows after the warm-up give updates/s = env steps/s x updates per step (1).

Both sides time acting, env steps, storing transitions and updates. Inside the platform's
windows are also its per-step update metrics, the MAGE learner's action-gradient probe
(once per window), the progress bar and a checkpoint's serialisation (at the first episode
end past `checkpoint_every`); the evaluation that ends each window is timed apart
(`perf/eval_seconds`), and the logging call (the batched Tune report, which writes the
checkpoint's files) runs between windows, and MLflow writes in the driver process. Both
sides use one torch thread, as a trial does.

    python bench/td3_updates.py [--env-steps 4000] [--warmup 1000] [--hidden 128 128]
                                [--eval-every 500]

Goal: platform updates/s at least 0.9 x the plain TD3's.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "mage" / "pendulum.yaml"
SEED = 0
UPDATES_PER_STEP = 1

# TD3's settings, the paper's: the platform side is given the same.
LR = 3e-4
GAMMA = 0.99
TAU = 0.005
BATCH_SIZE = 256
POLICY_NOISE = 0.2
NOISE_CLIP = 0.5
POLICY_DELAY = 2
EXPLORATION_NOISE = 0.1


def mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int]):
        super().__init__()
        self.net = mlp(obs_dim, hidden, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int]):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, hidden, 1)
        self.q2 = mlp(obs_dim + action_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class PlainTD3:
    def __init__(self, obs_dim: int, action_dim: int, hidden: list[int]):
        self.actor = Actor(obs_dim, action_dim, hidden)
        self.critic = TwinCritic(obs_dim, action_dim, hidden)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=LR)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=LR)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        action = self.actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        action = action + rng.normal(0.0, EXPLORATION_NOISE, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def update(self, obs, action, reward, next_obs, terminated) -> None:
        with torch.no_grad():
            noise = (torch.randn_like(action) * POLICY_NOISE).clamp(-NOISE_CLIP, NOISE_CLIP)
            next_action = (self.actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            q1, q2 = self.critic_target(next_obs, next_action)
            y = reward + GAMMA * (1.0 - terminated) * torch.min(q1, q2)
        q1, q2 = self.critic(obs, action)
        critic_loss = 0.5 * (((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean())
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        self.updates += 1
        if self.updates % POLICY_DELAY:
            return
        # The critic frozen for the actor's step, as the platform does: no critic gradients.
        self.critic.requires_grad_(False)
        actor_loss = -self.critic(obs, self.actor(obs))[0].mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.critic.requires_grad_(True)
        pairs = ((self.actor_target, self.actor), (self.critic_target, self.critic))
        with torch.no_grad():
            for target, source in pairs:
                for t, s in zip(target.parameters(), source.parameters(), strict=True):
                    t.lerp_(s, TAU)


def plain_updates_per_s(hidden: list[int], env_steps: int, warmup: int) -> float:
    """The plain TD3 on Pendulum-v1: updates per second after the warm-up."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    env = gymnasium.make("Pendulum-v1")
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    scale = env.action_space.high
    agent = PlainTD3(obs_dim, action_dim, hidden)
    observations = np.zeros((env_steps, obs_dim), np.float32)
    actions = np.zeros((env_steps, action_dim), np.float32)
    rewards = np.zeros(env_steps, np.float32)
    next_observations = np.zeros((env_steps, obs_dim), np.float32)
    terminations = np.zeros(env_steps, np.float32)
    buffer = (observations, actions, rewards, next_observations, terminations)
    obs, _ = env.reset(seed=SEED)
    for step in range(env_steps):
        if step == warmup:
            started = time.perf_counter()
        if step < warmup:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        else:
            action = agent.act(obs, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action * scale)
        observations[step], actions[step], rewards[step] = obs, action, reward
        next_observations[step], terminations[step] = next_obs, terminated
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= warmup:
            for _ in range(UPDATES_PER_STEP):
                index = rng.integers(0, step + 1, size=BATCH_SIZE)
                agent.update(*(torch.from_numpy(array[index]) for array in buffer))
    env.close()
    return (env_steps - warmup) * UPDATES_PER_STEP / (time.perf_counter() - started)


def write_spec(
    folder: Path,
    run_name: str,
    loop: dict,
    td3: dict,
    seeds: int,
    max_concurrent: int | None = None,
) -> Path:
    """`jobs/mage/pendulum.yaml` with only its `td3` arm, `loop` and `td3` merged into its
    config, written into `folder`."""
    spec = yaml.safe_load(SPEC.read_text())
    spec["config"]["loop"].update(loop)
    spec["config"].setdefault("td3", {}).update(td3)
    spec["trials"] = {"seeds": seeds, "arms": {"td3": spec["trials"]["arms"]["td3"]}}
    if max_concurrent is not None:
        spec["trials"]["max_concurrent"] = max_concurrent
    spec["claims"] = []  # they compare the arms left out
    spec["tracking"] = {"experiment": "bench", "run_name": run_name}
    path = folder / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns.db'}"


def maestro_run(spec: Path, folder: Path) -> float:
    """Wall seconds of `maestro run spec` in `folder`, tracking to its sqlite database."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(folder),
        "MAESTRO_STORE": str(folder / "store"),
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", str(spec)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"maestro run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def platform_updates_per_s(folder: Path, warmup: int, eval_every: int) -> tuple[float, int]:
    """Updates/s over the trial's `perf/env_steps_per_s` windows after the warm-up (the
    total steps over the total seconds), and the number of those windows."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(folder))
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id])
    (trial,) = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    history = client.get_metric_history(trial.info.run_id, "perf/env_steps_per_s")
    windows = [point.value for point in history if point.step - eval_every >= warmup]
    seconds = sum(eval_every / steps_per_s for steps_per_s in windows)
    return len(windows) * eval_every * UPDATES_PER_STEP / seconds, len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-steps", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--eval-every", type=int, default=500, help="env steps per window")
    args = parser.parse_args()

    before = plain_updates_per_s(args.hidden, args.env_steps, args.warmup)
    print(f"plain TD3, before: {before:.1f} updates/s")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loop = {
            "env_steps": args.env_steps,
            "warmup_steps": args.warmup,
            "updates_per_step": UPDATES_PER_STEP,
            "eval_every": args.eval_every,
            "eval_episodes": 5,
            "checkpoint_every": 2000,
        }
        td3 = {
            "hidden": args.hidden,
            "activation": "relu",
            "optimizer": "adam",
            "actor_lr": LR,
            "critic_lr": LR,
            "gamma": GAMMA,
            "tau": TAU,
            "batch_size": BATCH_SIZE,
            "policy_noise": POLICY_NOISE,
            "noise_clip": NOISE_CLIP,
            "policy_delay": POLICY_DELAY,
            "exploration_noise": EXPLORATION_NOISE,
            "td_loss": "squared",
            "actor_q": "q1",
            "grad_clip": None,
        }
        spec = write_spec(folder, "td3-updates", loop, td3, seeds=1)
        wall = maestro_run(spec, folder)
        platform, windows = platform_updates_per_s(folder, args.warmup, args.eval_every)
    print(
        f"maestro run: {platform:.1f} updates/s over {windows} windows of {args.eval_every} env "
        f"steps (the whole run {wall:.1f} s)"
    )
    after = plain_updates_per_s(args.hidden, args.env_steps, args.warmup)
    print(f"plain TD3, after: {after:.1f} updates/s")
    reference = (before + after) / 2
    ratio = platform / reference
    print(f"TD3 {args.hidden}, batch {BATCH_SIZE}, {args.env_steps - args.warmup} updates")
    print(f"plain TD3 (mean): {reference:.1f} updates/s")
    print(f"platform:         {platform:.1f} updates/s")
    print(f"ratio platform / plain: {ratio:.3f}")
    print(f"goal: at least 0.9 ({'met' if ratio >= 0.9 else 'not met'})")


if __name__ == "__main__":
    main()
