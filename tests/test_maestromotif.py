"""MaestroMotif's skill layer in the env, the per-skill reward on the learner, the
skill-conditioned agent, and the method end to end (`maestro run` on a small spec: real
NLE, Ray, Tune, RLlib APPO and MLflow; the embedding annotator; the hand-written code in
the sandbox)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from nle import nethack

from maestro.envs.nethack import caption, make_env
from maestro.feedback.intrinsic import IntrinsicRewardConfig
from maestro.feedback.reward_model import (
    CaptionRewardNet,
    Normalisation,
    RewardModel,
    RewardModelConfig,
)
from maestro.methods.maestromotif.captions import reward_input
from maestro.methods.maestromotif.controller import skill_functions
from maestro.methods.maestromotif.env import (
    ENV_OBSERVATION_KEYS,
    SkillEnv,
    SkillVectorEnv,
    skill_controller,
)
from maestro.methods.maestromotif.intrinsic import (
    SkillRewardConnector,
    SkillRewards,
    skill_key,
)
from maestro.rl.agent import AgentConfig, module_spec

from .test_rl import fragments, played_game

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ("discoverer", "descender", "ascender", "worshipper", "merchant")


def quick_skill_code() -> str:
    """The shipped skill code with the discoverer stopping after 20 turns, not 500, so a
    few hundred steps show skills switching."""
    source = (ROOT / "jobs/maestromotif/code/skills.py").read_text()
    assert "DISCOVERER_TURNS = 500" in source
    return source.replace("DISCOVERER_TURNS = 500", "DISCOVERER_TURNS = 20")


def skill_game(steps: int, seed: int, skill_code: str) -> dict:
    """A real game with random actions through `SkillEnv` (`test_rl.played_game`), with
    the skill code's failures."""
    env = SkillEnv(
        make_env("score", seed, 10_000, ENV_OBSERVATION_KEYS),
        SKILLS,
        skill_controller(SKILLS, skill_code, None, seed),
    )
    game = played_game(steps, seed, env)
    game["failures"] = Counter(env.controller.failures)
    return game


def random_reward_model(seed: int, texts: list[str]) -> RewardModel:
    """An untrained reward model normalised over `texts` (half of them above 0)."""
    torch.manual_seed(seed)
    model = RewardModel(CaptionRewardNet(RewardModelConfig()), Normalisation(0.0, 1.0, 0.0))
    raw = model.raw(texts)
    model.norm = Normalisation(float(np.median(raw)), float(raw.std()), 0.0)
    return model


def test_skill_env_observations_and_the_per_skill_reward_by_hand() -> None:
    game = skill_game(400, seed=3, skill_code=quick_skill_code())
    skills = np.array([o["skill"] for o in game["obs"]])
    changes = np.array([int(o["level_change"]) for o in game["obs"]])
    assert game["space"][0].contains(game["obs"][0])
    assert set(game["obs"][0]) == {*("tty_chars", "tty_colors", "tty_cursor", "blstats"),
                                   "message", "skill", "level_change"}  # fmt: skip
    assert len(set(skills.tolist())) >= 2, "skills must switch for this test to bite"
    depths = np.array([o["blstats"][nethack.NLE_BL_DEPTH] for o in game["obs"]])
    np.testing.assert_array_equal(changes[1:], np.clip(np.diff(depths), -1, 1))
    assert changes[0] == 0 and not game["failures"]

    # Each step rewarded by its skill's model, thresholded by its eps, counted per episode.
    a1, beta = 1.0, 3.0
    keys = [
        skill_key(int(o["skill"]), reward_input(caption(o["message"]), int(o["level_change"])))
        for o in game["obs"][:-1]
    ]
    texts = sorted({key.split("|", 1)[1] for key in keys})
    models = [random_reward_model(seed, texts) for seed in range(len(SKILLS))]
    eps = [0.0, -0.5, 0.5, 0.0, 0.0]
    counts: Counter = Counter()
    expected = []
    for key in keys:
        skill, text = int(key.split("|", 1)[0]), key.split("|", 1)[1]
        value = float(models[skill].normalised([text])[0])
        counts[key] += 1
        expected.append((value if value >= eps[skill] else 0.0) / counts[key] ** beta)
    assert sum(r > 0 for r in expected) >= 5
    np.testing.assert_allclose(
        SkillRewards(models, eps)(keys[:50]) > 0, np.array(expected[:50]) > 0
    )
    mix = IntrinsicRewardConfig(coef_intrinsic=a1, coef_extrinsic=0.0, beta=beta)
    connector = SkillRewardConnector(
        reward_models=[m.to_bytes() for m in models], thresholds=eps, intrinsic=mix.model_dump()
    )
    n = len(game["actions"])
    pieces = fragments(game, [n // 3, 2 * n // 3], ends=True)
    for piece in pieces:
        connector(rl_module=None, batch={}, episodes=[piece], explore=False, shared_data={})
    shaped = np.concatenate([p.get_rewards() for p in pieces])
    np.testing.assert_allclose(shaped, a1 * np.array(expected), rtol=1e-5, atol=1e-6)
    # r_int and steps per acting skill, for skills/intrinsic_reward_per_step/<skill>.
    stats = connector.drain()
    acting = skills[:-1]
    for k in set(acting.tolist()):
        assert stats[f"skill_steps/{k}"] == (acting == k).sum()
        mine = np.array(expected)[acting == k].sum()
        assert stats[f"skill_intrinsic_sum/{k}"] == pytest.approx(mine, rel=1e-6, abs=1e-9)


def test_skill_code_that_crashes_or_hangs_is_a_counted_failure_not_a_dead_rollout() -> None:
    bad = (
        quick_skill_code()
        .replace(
            "def termination_discoverer(features):\n",
            "def termination_discoverer(features):\n    while True:\n        pass\n",
        )
        .replace(
            "def initiation_merchant(features):\n",
            "def initiation_merchant(features):\n    return 1 / 0\n",
        )
    )
    game = skill_game(60, seed=5, skill_code=bad)
    assert len(game["actions"]) == 60
    # Three failures each, then no more calls this episode (a hang costs three time limits).
    assert game["failures"] == {"initiation_merchant": 3, "termination_discoverer": 3}
    # The discoverer (the first skill) never answered whether to stop: it runs on.
    assert {int(o["skill"]) for o in game["obs"]} == {0}


def test_the_vector_env_batches_the_same_skill_layer_as_single_envs() -> None:
    """RLlib's envs in training (`SkillVectorEnv`, one sandbox round trip per step of all
    envs) give each env the skills and level changes `SkillEnv` gives it alone, across
    episode ends (the vector resets an env on the step after its last)."""
    code, seeds, max_steps = quick_skill_code(), [11, 12, 13], 80
    controllers = [skill_controller(SKILLS, code, None, seed) for seed in seeds]
    vector = SkillVectorEnv(
        gym.vector.SyncVectorEnv(
            [partial(make_env, "score", s, max_steps, ENV_OBSERVATION_KEYS) for s in seeds]
        ),
        SKILLS,
        controllers,
        controllers[0].caller,
    )
    singles = [
        SkillEnv(
            make_env("score", s, max_steps, ENV_OBSERVATION_KEYS),
            SKILLS,
            skill_controller(SKILLS, code, None, s),
        )
        for s in seeds
    ]
    rng = np.random.default_rng(0)
    observations, _ = vector.reset()
    seen = [[(int(observations["skill"][i]), 0)] for i in range(len(seeds))]
    alone = [[(int(o["skill"]), int(o["level_change"]))] for o, _ in (e.reset() for e in singles)]
    starts, failures = np.zeros(len(seeds), bool), []
    for _ in range(200):
        actions = rng.integers(vector.single_action_space.n, size=len(seeds))
        observations, _, terminated, truncated, infos = vector.step(actions)
        for i, env in enumerate(singles):
            seen[i].append((int(observations["skill"][i]), int(observations["level_change"][i])))
            o = env.reset()[0] if starts[i] else env.step(int(actions[i]))[0]
            alone[i].append((int(o["skill"]), int(o["level_change"])))
        starts = terminated | truncated
        if "episode_skill_failures" in infos:
            failures += infos["episode_skill_failures"][infos["_episode_skill_failures"]].tolist()
    assert seen == alone
    assert all(len({skill for skill, _ in s}) >= 2 for s in seen)
    assert len(failures) >= len(seeds) and set(failures) == {0}


def test_the_agent_reads_the_active_skill() -> None:
    env = SkillEnv(
        make_env("score", 0, 100, ENV_OBSERVATION_KEYS), SKILLS, controller=None, fixed_skill=0
    )
    observation, _ = env.reset()
    spec = module_spec(AgentConfig(core="mlp"), rollout_fragment_length=16)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    env.close()
    module = spec.build()
    from ray.rllib.core.columns import Columns

    def logits(skill: int) -> torch.Tensor:
        obs = {k: torch.from_numpy(np.array(v))[None] for k, v in observation.items()}
        obs["skill"] = torch.tensor([skill])
        return module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]

    first = logits(0)
    assert module.trunk.blstats[0].in_features == nethack.BLSTATS_SHAPE[0] + len(SKILLS)
    assert all(not torch.allclose(first, logits(k)) for k in range(1, len(SKILLS)))


def test_maestromotif_run_end_to_end(tmp_path, mlflow_server) -> None:
    """Small but whole: every stage runs, the code is versioned by digest and logged, the
    trial reports skill usage, the skills alone and the task composed."""
    spec = yaml.safe_load((ROOT / "jobs/maestromotif/smoke.yaml").read_text())
    spec["config"].update(
        skills=str(ROOT / "jobs/maestromotif/skills.yaml"),
        code=str(ROOT / "jobs/maestromotif/code"),
        collect={"num_shards": 2, "episodes_per_shard": 1, "max_episode_steps": 300,
                 "num_actors": 1},
        pairs={"num_draws": 300},
    )  # fmt: skip
    spec["config"]["train"].update(
        env_steps=1000, num_envs_per_env_runner=4, eval_episodes=1, eval_max_episode_steps=100
    )
    spec.pop("presets")
    spec["tracking"]["run_name"] = "maestromotif"
    path = tmp_path / "maestromotif.yaml"
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "MAESTRO_STORE": str(store)}
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", str(path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (prepared_path,) = store.glob("runs/maestromotif/*/prepared.json")
    prepared = json.loads(prepared_path.read_text())
    assert prepared["skills"] == list(SKILLS)
    assert set(prepared["reward_models"]) == set(SKILLS) == set(prepared["thresholds"])
    source = (ROOT / "jobs/maestromotif/code/skills.py").read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert prepared["code"]["skills"].endswith(f"/code/{digest}.py")
    assert (store / prepared["code"]["skills"]).read_text() == source

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("maestromotif").experiment_id
    (parent,) = client.search_runs([experiment], "attributes.run_name = 'maestromotif'")
    metrics = parent.data.metrics
    for skill in SKILLS:
        assert 0.5 <= metrics[f"reward/{skill}/final_train_accuracy"] <= 1.0
        assert metrics[f"annotation/{skill}/pairs_labelled"] > 0
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "code")}
    assert {"code/skills.py", "code/skills.json", "code/gnomish_mines.py"} <= logged
    (child,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    final = child.data.metrics
    assert "skills/intrinsic_reward_per_step/discoverer" in final
    usage = [final[f"skills/usage/{skill}"] for skill in SKILLS]
    assert sum(usage) == pytest.approx(1.0) and final["skills/usage/discoverer"] > 0
    assert final["env_steps"] >= 1000
    for skill in ("discoverer", "descender"):
        assert final[f"skill/{skill}/depth"] >= 1 and final[f"skill/{skill}/length"] > 0
    assert 0.0 <= final["task/gnomish_mines/success_rate"] <= 1.0
    task_usage = sum(final[f"task/gnomish_mines/usage/{skill}"] for skill in SKILLS)
    assert task_usage == pytest.approx(1.0)
    assert skill_functions(SKILLS)[-1] == "policy"
