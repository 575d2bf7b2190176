"""NetHack training against a plain-torch reference: env steps/s of Maestro's APPO training
against a minimal A2C trainer of the same model in plain torch (no Ray, no RLlib), in one
run on the same cores.

Maestro: `algorithm_config(...).build_algo()` with jobs/motif/quickstart.yaml's `train:`
settings, on the env reward (the reference has no intrinsic reward), one env runner per
core but one, the learner in the driver. Reference: as many envs, from RLlib's env creator
(`make_training_env`: same task, wrappers, observations), split over one worker process per
core; the driver acts with a batched forward pass of the same model (`NetHackTrunk` and the
RLModule's heads; parameter counts asserted equal) and after each rollout fragment of every
env (the train batch) takes one A2C step (GAE advantages, value loss, entropy bonus) with
the same Adam lr, gamma, lambda, coefficients, gradient clip and torch threads. It is
synchronous (envs wait while the driver acts and learns; APPO overlaps the two) and has no
target network or v-trace (APPO's learner also runs its target network forward).

Each side is built once and warmed up, then they alternate (reference, maestro, ...)
`--repeats` times; each turn starts with an untimed update (Maestro: iteration, which takes
in what its env runner sampled while the reference ran) and then times about `--seconds`.
The best turn of each side is kept: a shared machine only ever adds time.

    python bench/nethack_vs_reference.py [--seconds 20] [--repeats 2] [--agent small|paper]
        [--threads N] [--appo_loss rllib|sample_factory]

`--agent small`: the quickstart's agent (whole screen, LSTM 128); `paper`: the `full`
preset's (12x12 crop, GRU 512), with the quickstart's training settings.

Goal: maestro / reference >= 1.0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from functools import partial
from pathlib import Path
from typing import get_args

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from maestro.rl.agent import CORE_STATE, AgentConfig, NetHackTrunk
from maestro.rl.env import make_training_env
from maestro.rl.results import count, nested, sampled_env_steps
from maestro.rl.training import TrainingConfig, algorithm_config
from maestro.runtime import init_ray
from maestro.spec import ResourcesSpec, load_spec

QUICKSTART = Path(__file__).resolve().parents[1] / "jobs" / "motif" / "quickstart.yaml"
APPO_LOSSES = get_args(TrainingConfig.model_fields["appo_loss"].annotation)


def training_config(
    agent: str, cores: int, threads: int | None, appo_loss: str | None = None
) -> TrainingConfig:
    """The quickstart's `train:` settings with one env runner per core but one, the
    `small` (quickstart) or `paper` (`full` preset) agent, `threads` torch threads for
    learning and acting in the driver and APPO's loss `appo_loss` (None: the quickstart's);
    the train batch is one rollout fragment of every env, what each of the reference's
    updates takes."""
    train = load_spec(QUICKSTART).config.train
    runners = cores - 1
    batch = runners * train.num_envs_per_env_runner * train.rollout_fragment_length
    update = {"num_env_runners": runners, "train_batch_size": batch}
    if threads is not None:
        update["torch_threads"] = threads
    if appo_loss is not None:
        update["appo_loss"] = appo_loss
    if agent == "paper":
        update["agent"] = load_spec(QUICKSTART, preset="full").config.train.agent.model_dump()
    return TrainingConfig.model_validate({**train.model_dump(), **update})


def env_worker(connection, task: str, max_episode_steps: int, worker_index: int, n: int):
    """Worker process: `n` envs as RLlib's env runner `worker_index` makes them, stepped in
    turn (a new episode starts in the step that ends one) on the driver's actions."""
    # Imported here, not above: Ray is first imported after `maestro.rl`, which fixes
    # Ray's auth mode before Ray reads it.
    from ray.rllib.env.env_context import EnvContext

    env_config = {"task": task, "max_episode_steps": max_episode_steps, "seed": 0, "epoch": 0}
    make = partial(make_training_env, EnvContext(env_config, worker_index=worker_index))
    envs = gym.vector.SyncVectorEnv([make] * n, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    connection.send((envs.reset()[0], int(envs.single_action_space.n)))
    while (actions := connection.recv()) is not None:
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        connection.send((obs, rewards, terminated | truncated))
    envs.close()


def concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The workers' observations as one batch."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


class EnvWorkers:
    """`num_envs` envs split over `workers` processes that step their shares in parallel."""

    def __init__(self, task: str, num_envs: int, workers: int, max_episode_steps: int):
        context = multiprocessing.get_context("spawn")
        # One process per core, each stepping several envs, like an env runner: a process
        # per env (gymnasium's AsyncVectorEnv) would crowd the cores with context switches.
        self.sizes = [len(share) for share in np.array_split(np.arange(num_envs), workers)]
        self.connections, self.processes = [], []
        for index, size in enumerate(self.sizes):
            parent, child = context.Pipe()
            # Worker index >= 1, as remote env runners: each worker's games differ.
            args = (child, task, max_episode_steps, index + 1, size)
            process = context.Process(target=env_worker, args=args, daemon=True)
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        first = [connection.recv() for connection in self.connections]
        self.first_obs = concatenate([obs for obs, _ in first])
        self.num_actions = first[0][1]

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Observations, rewards and episode ends (as floats) of every env."""
        shares = np.split(actions, np.cumsum(self.sizes)[:-1])
        for connection, share in zip(self.connections, shares, strict=True):
            connection.send(share)
        results = [connection.recv() for connection in self.connections]
        obs = concatenate([r[0] for r in results])
        rewards = np.concatenate([r[1] for r in results]).astype(np.float32)
        return obs, rewards, np.concatenate([r[2] for r in results]).astype(np.float32)

    def close(self) -> None:
        """Stop the workers (each closes its envs)."""
        for connection in self.connections:
            connection.send(None)
        for process in self.processes:
            process.join()


class ActorCritic(nn.Module):
    """The agent as `NetHackRLModule.setup` builds it (trunk, policy and value heads)."""

    def __init__(self, agent: AgentConfig, blstats_size: int, num_actions: int):
        super().__init__()
        self.trunk = NetHackTrunk(agent, blstats_size)
        self.pi = nn.Linear(agent.core_dim, num_actions)
        self.vf = nn.Linear(agent.core_dim, 1)

    def initial_state(self, n: int) -> tuple[torch.Tensor, ...]:
        config = self.trunk.config
        return tuple(torch.zeros(1, n, config.core_dim) for _ in CORE_STATE[config.core])

    def forward(self, obs: dict[str, torch.Tensor], state: tuple, starts: torch.Tensor):
        """Logits [T, N, A], values [T, N] and the last state for observations [T, N, ...]
        from `state`, zeroed for the envs whose episode starts at a step (`starts` [T, N])."""
        steps, n = starts.shape
        codes = self.trunk.encode({k: v.flatten(0, 1) for k, v in obs.items()})
        codes, features = codes.view(steps, n, -1), []
        for t in range(steps):
            if not state:  # the MLP core
                features.append(self.trunk.core(codes[t]))
                continue
            # A new episode starts from the zero state, as RLlib starts each episode's sequence.
            state = tuple(s * (1.0 - starts[t]).view(1, n, 1) for s in state)
            out, state = self.trunk.core(codes[t, :, None], state if len(state) == 2 else state[0])
            state = state if isinstance(state, tuple) else (state,)
            features.append(out[:, 0])
        features = torch.stack(features)
        return self.pi(features), self.vf(features).squeeze(-1), state


def gae(rewards: torch.Tensor, values: torch.Tensor, ends: torch.Tensor, gamma: float, lam: float):
    """GAE advantages [T, N] of rewards and episode ends [T, N] and values [T + 1, N]; no
    bootstrap past an episode's end (a truncation counts as one, as in CleanRL)."""
    advantages, last = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        carry = 1.0 - ends[t]
        delta = rewards[t] + gamma * values[t + 1] * carry - values[t]
        advantages[t] = last = delta + gamma * lam * carry * last
    return advantages


def stack(steps: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Per-step observation batches as tensors [T, N, ...]."""
    return {key: torch.from_numpy(np.stack([obs[key] for obs in steps])) for key in steps[0]}


class Reference:
    """The plain-torch A2C trainer; `seconds` adds up where its time goes."""

    def __init__(self, task: str, config: TrainingConfig, workers: int):
        self.config = config
        n = config.num_env_runners * config.num_envs_per_env_runner
        self.envs = EnvWorkers(task, n, workers, config.max_episode_steps)
        self.obs, self.starts = self.envs.first_obs, np.ones(n, dtype=np.float32)
        torch.manual_seed(0)
        blstats = self.obs["blstats"].shape[1]
        self.model = ActorCritic(config.agent, blstats, self.envs.num_actions)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.state = self.model.initial_state(n)
        self.seconds = dict.fromkeys(("envs", "act", "learn"), 0.0)

    def update(self) -> int:
        """One rollout fragment of every env, then one gradient step; the env steps taken."""
        c, start_state = self.config, self.state
        observations, starts, actions, rewards = [self.obs], [self.starts], [], []
        for _ in range(c.rollout_fragment_length):
            t0 = time.perf_counter()
            with torch.no_grad():
                step_starts = torch.from_numpy(self.starts)[None]
                logits, _, self.state = self.model(stack([self.obs]), self.state, step_starts)
                action = Categorical(logits=logits[0]).sample()
            t1 = time.perf_counter()
            self.obs, reward, self.starts = self.envs.step(action.numpy())
            self.seconds["act"] += t1 - t0
            self.seconds["envs"] += time.perf_counter() - t1
            observations.append(self.obs)
            starts.append(self.starts)
            actions.append(action)
            rewards.append(torch.from_numpy(reward))
        t0 = time.perf_counter()
        starts_t = torch.from_numpy(np.stack(starts))
        logits, values, _ = self.model(stack(observations), start_state, starts_t)
        advantages = gae(torch.stack(rewards), values.detach(), starts_t[1:], c.gamma, c.lambda_)
        returns = advantages + values[:-1].detach()
        dist = Categorical(logits=logits[:-1])
        policy_loss = -(dist.log_prob(torch.stack(actions)) * advantages).mean()
        value_loss = 0.5 * (returns - values[:-1]).pow(2).mean()
        loss = policy_loss + c.vf_loss_coeff * value_loss - c.entropy_coeff * dist.entropy().mean()
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.seconds["learn"] += time.perf_counter() - t0
        return len(self.starts) * c.rollout_fragment_length


def reference_turn(reference: Reference, seconds: float) -> tuple[float, str]:
    """Env steps/s of the reference's updates over about `seconds` (after an untimed one)
    and the shares of its time spent waiting on the envs, acting and learning."""
    reference.update()
    reference.seconds = dict.fromkeys(reference.seconds, 0.0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += reference.update()
    rate, total = steps / (time.perf_counter() - start), sum(reference.seconds.values())
    return rate, ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in reference.seconds.items())


def maestro_turn(algo, seconds: float) -> tuple[float, float, str]:
    """Sampled and trained env steps/s of `algo.train()` over about `seconds`, after an
    untimed iteration that takes in what the env runner sampled while the reference ran,
    and RLlib's own timers (smoothed over iterations) of sampling and learning."""
    algo.train()
    sampled, trained, start = 0, 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        result = algo.train()
        sampled += sampled_env_steps(result)
        trained += count(nested(result, "learners", "__all_modules__", "num_env_steps_trained"))
    elapsed = time.perf_counter() - start
    sample = nested(result, "env_runners", "sample", default=0.0)
    update = nested(result, "learners", "__all_modules__", "learner_thread_update_timer", default=0)
    timers = f"env runner {sample:.2f} s per sample call, learner {update:.2f} s per batch"
    return sampled / elapsed, trained / elapsed, timers


def parameter_count(module: nn.Module) -> int:
    """Parameters of a module, its target network (APPO's) left out."""
    return sum(p.numel() for name, p in module.named_parameters() if "target_" not in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="score")
    parser.add_argument(
        "--cores", type=int, default=2, help="driver + env runners; reference: env workers"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="timed per turn")
    parser.add_argument("--repeats", type=int, default=2, help="turns of each side")
    parser.add_argument("--agent", choices=("small", "paper"), default="small")
    parser.add_argument("--threads", type=int, help="torch threads in the driver (both sides)")
    parser.add_argument("--appo_loss", choices=APPO_LOSSES, help="Maestro's (the quickstart's)")
    args = parser.parse_args()

    config = training_config(args.agent, args.cores, args.threads, args.appo_loss)
    torch.set_num_threads(config.torch_threads or torch.get_num_threads())
    reference = Reference(args.task, config, workers=args.cores)

    init_ray(ResourcesSpec(num_cpus=args.cores))
    algo = algorithm_config(args.task, config, seed=0, epoch=0, settings=None).build_algo()
    try:
        sizes = parameter_count(reference.model), parameter_count(algo.get_module())
        assert sizes[0] == sizes[1], f"parameters: reference {sizes[0]}, maestro {sizes[1]}"
        print(
            f"{args.agent} agent ({config.agent.core} core, {config.appo_loss} loss): "
            f"{sizes[0]} parameters",
            flush=True,
        )
        while sampled_env_steps(algo.train()) == 0:
            pass  # env runners starting
        best = {"reference": 0.0, "maestro": 0.0}
        for repeat in range(args.repeats):
            rate, shares = reference_turn(reference, args.seconds)
            print(f"repeat {repeat} reference: {rate:7.1f} env steps/s ({shares})", flush=True)
            best["reference"] = max(best["reference"], rate)
            sampled, trained, timers = maestro_turn(algo, args.seconds)
            print(
                f"repeat {repeat} maestro:   {sampled:7.1f} env steps/s "
                f"(trained {trained:.1f}; {timers})",
                flush=True,
            )
            best["maestro"] = max(best["maestro"], sampled)
    finally:
        algo.stop()
        reference.envs.close()
    ratio = best["maestro"] / best["reference"]
    print(f"best env steps/s: reference {best['reference']:.1f}, maestro {best['maestro']:.1f}")
    print(f"maestro / reference: {ratio:.3f}  (goal >= 1.0)")


if __name__ == "__main__":
    main()
