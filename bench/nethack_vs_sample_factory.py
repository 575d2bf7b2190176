"""NetHack training against Sample Factory: env steps/s of Maestro's APPO against Sample
Factory 2.1.1's APPO training the same model on the same envs, in one run on the same cores.

Maestro: as in `bench/nethack_vs_reference.py` (the quickstart's `train:` settings on the env
reward, one env runner per core but one, the learner in the driver). Sample Factory: its
parallel runner (one rollout worker per core, each stepping its share of the envs in two
halves that take turns, as SF does by default; one inference worker; one learner process)
with the same envs (`make_training_env`: task, wrappers, observations), the same model
(`NetHackTrunk`'s encoders as SF's encoder, SF's GRU or LSTM core of the trunk's width, the
same linear heads; parameter counts asserted equal to Maestro's module) and the same
training sizes (envs, rollout fragment, batch, whole-fragment recurrence, one pass over
each batch, lr, gamma, coefficients, gradient clip, no input or return normalisation).
One difference: SF's advantages are GAE (its default; its v-trace path fails in 2.1.1),
Maestro's are v-trace (with `--appo_loss rllib`, RLlib's loss, also a target network).

Sample Factory is not in the project's lock (it pins numpy < 2 and gymnasium < 1 but runs
on the lock's numpy 2 and gymnasium 1.2): `make install-bench` adds it with --no-deps.

Each turn is a subprocess of this script (`--turn`) that builds its side afresh, so nothing
of the other side (Ray's processes, SF's workers) is alive while it runs; the sides
alternate (SF, Maestro, ...) `--repeats` times. A turn trains `--warmup` seconds untimed,
then times its env steps over about `--seconds` (Maestro: the env steps its iterations
sampled; SF: its learner's count after each training step). The best turn of each side is
kept: a shared machine only ever adds time.

    python bench/nethack_vs_sample_factory.py [--seconds 30] [--repeats 2]
        [--agent small|paper] [--threads N] [--appo_loss rllib|sample_factory]

Goal (issue 15): maestro / sample factory >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch
from sample_factory.algo.runners.runner import AlgoObserver
from sample_factory.algo.utils.context import global_model_factory
from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args
from sample_factory.envs.env_utils import register_env
from sample_factory.model.actor_critic import create_actor_critic
from sample_factory.model.encoder import Encoder
from sample_factory.train import make_runner

from maestro.rl.agent import AgentConfig, NetHackTrunk
from maestro.rl.env import make_training_env
from maestro.rl.training import TrainingConfig, algorithm_config
from maestro.runtime import init_ray
from maestro.spec import ResourcesSpec
from nethack_vs_reference import APPO_LOSSES, parameter_count, training_config
from nethack_vs_reference import maestro_turn as timed_iterations

ENV_NAME = "maestro_nethack"


def sample_factory_args(config: TrainingConfig, cores: int, train_dir: str) -> list[str]:
    """Sample Factory's command line for `config`'s sizes on `cores` rollout workers."""
    c, agent = config, config.agent
    assert agent.core in ("gru", "lstm"), "Sample Factory's cores are recurrent here"
    envs = c.num_env_runners * c.num_envs_per_env_runner
    assert envs % (2 * cores) == 0, "each worker steps two equal halves"
    settings = {
        "algo": "APPO",
        "env": ENV_NAME,
        "experiment": "bench",
        "train_dir": train_dir,
        "device": "cpu",
        "num_workers": cores,
        "num_envs_per_worker": envs // cores,
        "worker_num_splits": 2,
        "rollout": c.rollout_fragment_length,
        "recurrence": c.rollout_fragment_length,
        "batch_size": c.train_batch_size,
        "num_batches_per_epoch": 1,
        "num_epochs": 1,
        # SF's default; its v-trace path fails in 2.1.1 (the learner's summaries read GAE
        # advantages that v-trace does not make). GAE is the lighter of the two.
        "with_vtrace": False,
        "learning_rate": c.lr,
        "gamma": c.gamma,
        "gae_lambda": c.lambda_,
        "exploration_loss_coeff": c.entropy_coeff,
        "value_loss_coeff": c.vf_loss_coeff,
        "max_grad_norm": c.grad_clip,
        "ppo_clip_ratio": c.clip_param if c.clip_param is not None else 0.4,
        "normalize_input": False,
        "normalize_returns": False,
        "use_rnn": True,
        "rnn_type": agent.core,
        "rnn_size": agent.core_dim,
        "rnn_num_layers": 1,
        "decoder_mlp_layers": [],
        "actor_critic_share_weights": True,
        "save_every_sec": 10**6,
        "save_best_every_sec": 10**6,
        "experiment_summaries_interval": 10**6,
    }
    args = []
    for key, value in settings.items():
        values = value if isinstance(value, list) else [value]
        args += [f"--{key}", *map(str, values)]
    return args


class TrunkEncoder(Encoder):
    """`NetHackTrunk`'s encoders (screen, message, stats, fuse); SF adds its own core of the
    same kind and width, and the heads."""

    def __init__(self, cfg, obs_space):
        super().__init__(cfg)
        self.agent = AgentConfig.model_validate_json(cfg.maestro_agent)
        self.trunk = NetHackTrunk(self.agent, obs_space["blstats"].shape[0])
        del self.trunk.core

    def forward(self, obs_dict):
        return self.trunk.encode(obs_dict)

    def get_out_size(self) -> int:
        return self.agent.core_dim


def make_env(full_env_name, cfg, env_config=None, render_mode=None):
    """SF's env factory: RLlib's env creator, SF's worker i as RLlib's env runner i + 1."""
    from ray.rllib.env.env_context import EnvContext  # after maestro.rl: see the reference

    worker = 1 + (env_config.worker_index if env_config is not None else 0)
    context = {"task": cfg.maestro_task, "max_episode_steps": cfg.maestro_max_episode_steps}
    return make_training_env(EnvContext({**context, "seed": 0, "epoch": 0}, worker))


def register_components() -> None:
    """The env and encoder in SF's registries, in the turn's process (SF hands its
    registries on to the processes it starts)."""
    register_env(ENV_NAME, make_env)
    global_model_factory().register_encoder_factory(TrunkEncoder)


def sample_factory_config(config: TrainingConfig, task: str, argv: list[str]):
    """SF's config from its command line `argv` plus this bench's keys."""
    parser, _ = parse_sf_args(argv)
    parser.add_argument("--maestro_task", default=task)
    parser.add_argument("--maestro_agent", default=config.agent.model_dump_json())
    parser.add_argument("--maestro_max_episode_steps", type=int, default=config.max_episode_steps)
    return parse_full_cfg(parser, argv)


class Clock(AlgoObserver):
    """Time and the learner's env steps after each training step; ends training after
    `seconds` (SF 2.1.1's `--train_for_seconds` never fires: its clock is not advanced)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.marks: list[tuple[float, int]] = []

    def on_training_step(self, runner, training_iteration_since_resume: int) -> None:
        self.marks.append((time.perf_counter(), sum(runner.env_steps.values())))
        if self.marks[-1][0] - self.marks[0][0] >= self.seconds:
            runner.cfg.train_for_env_steps = 0  # read right after this call

    def rate(self, warmup: float) -> tuple[float, float]:
        """Env steps/s and seconds of the window that starts `warmup` s after the first mark."""
        first = self.marks[0][0]
        t0, steps0 = next((t, s) for t, s in self.marks if t - first >= warmup)
        t1, steps1 = self.marks[-1]
        return (steps1 - steps0) / (t1 - t0), t1 - t0


def sample_factory_turn(
    config: TrainingConfig, cores: int, task: str, warmup: float, seconds: float
) -> None:
    """One Sample Factory run in this process; prints a JSON line with its env steps/s over
    the timed window and its model's parameter count."""
    register_components()
    with tempfile.TemporaryDirectory() as train_dir:
        argv = sample_factory_args(config, cores, train_dir)
        cfg, runner = make_runner(sample_factory_config(config, task, argv))
        env = make_env(ENV_NAME, cfg)
        model = create_actor_critic(cfg, env.observation_space, env.action_space)
        parameters = sum(p.numel() for p in model.parameters())
        env.close()
        clock = Clock(warmup + seconds)
        runner.register_observer(clock)
        runner.init()
        runner.run()
    rate, seconds = clock.rate(warmup)
    print(json.dumps({"rate": rate, "seconds": seconds, "parameters": parameters}), flush=True)


def maestro_turn(
    config: TrainingConfig, cores: int, task: str, warmup: float, seconds: float
) -> None:
    """One Maestro run in this process (its own local Ray cluster): `--warmup` seconds of
    iterations, then the reference bench's timed iterations; prints a JSON line like
    `sample_factory_turn`'s, plus RLlib's timers."""
    # The driver's torch threads as `train_agent` sets them (the quickstart's, or --threads).
    torch.set_num_threads(config.torch_threads or torch.get_num_threads())
    init_ray(ResourcesSpec(num_cpus=cores))
    algo = algorithm_config(task, config, seed=0, epoch=0, settings=None).build_algo()
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            algo.train()
        rate, _, timers = timed_iterations(algo, seconds)
        parameters = parameter_count(algo.get_module())
    finally:
        algo.stop()
    turn = {"rate": rate, "seconds": seconds, "parameters": parameters}
    print(json.dumps({**turn, "timers": timers}), flush=True)


def run_turn(side: str, args) -> dict:
    """One turn of `side` ('sample-factory' or 'maestro') in a subprocess of this script,
    nothing of the other side alive: its env steps/s, timed seconds, parameter count."""
    command = [sys.executable, __file__, "--turn", side, "--agent", args.agent]
    command += ["--cores", str(args.cores), "--task", args.task]
    command += ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.appo_loss:
        command += ["--appo_loss", args.appo_loss]
    # A failed SF process leaves the others waiting, so the turn has a deadline.
    limit = args.warmup + args.seconds + 180
    out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=limit)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{side} turn failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="score")
    parser.add_argument("--cores", type=int, default=2, help="Maestro: driver + env runners")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed per turn")
    parser.add_argument("--warmup", type=float, default=20.0, help="untimed per turn")
    parser.add_argument("--repeats", type=int, default=2, help="turns of each side")
    parser.add_argument("--agent", choices=("small", "paper"), default="small")
    parser.add_argument("--threads", type=int, help="Maestro driver's torch threads")
    parser.add_argument("--appo_loss", choices=APPO_LOSSES, help="Maestro's (the quickstart's)")
    parser.add_argument("--turn", choices=TURNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = training_config(args.agent, args.cores, args.threads, args.appo_loss)
    if args.turn:
        TURNS[args.turn](config, args.cores, args.task, args.warmup, args.seconds)
        return

    print(f"{args.agent} agent ({config.agent.core} core, {config.appo_loss} loss)", flush=True)
    best = dict.fromkeys(TURNS, 0.0)
    parameters = set()
    for repeat in range(args.repeats):
        for side in TURNS:
            turn = run_turn(side, args)
            parameters.add(turn["parameters"])
            assert len(parameters) == 1, f"parameter counts differ: {parameters}"
            timers = f"; {turn['timers']}" if "timers" in turn else ""
            print(
                f"repeat {repeat} {side:>14}: {turn['rate']:7.1f} env steps/s "
                f"({turn['parameters']} parameters, {turn['seconds']:.0f} s{timers})",
                flush=True,
            )
            best[side] = max(best[side], turn["rate"])
    sf, maestro = best["sample-factory"], best["maestro"]
    print(f"best env steps/s: sample factory {sf:.1f}, maestro {maestro:.1f}")
    print(f"maestro / sample factory: {maestro / sf:.3f}  (goal >= 1.0)")


TURNS = {"sample-factory": sample_factory_turn, "maestro": maestro_turn}

if __name__ == "__main__":
    main()
