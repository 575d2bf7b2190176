"""The paper's agent as `AgentConfig` choices: the screen crop around the player
(`screen: crop`) and the GRU core (`core: gru`), on real NLE observations; `use_lstm` from
older specs read as `core`. Tiny sizes, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from maestro.envs.nethack import make_env
from maestro.rl.agent import AgentConfig, NetHackTrunk, module_spec
from maestro.rl.appo import WaitingCircularBuffer
from maestro.rl.evaluate import AgentPolicy
from maestro.rl.training import TrainingConfig, algorithm_config

from .conftest import TINY_AGENT

EAT = ord("e")
TINY_CROP_GRU = AgentConfig(screen="crop", core="gru", **TINY_AGENT)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def screen_cells(observations: list[dict], size: int = 12) -> torch.Tensor:
    """The cell ids [N, size, size] a crop agent embeds for a batch of observations."""
    trunk = NetHackTrunk(AgentConfig(screen="crop", crop_size=size), blstats_size=27)
    obs = {k: torch.from_numpy(np.stack([o[k] for o in observations])) for k in observations[0]}
    return trunk.screen_cells(obs)


def text(cells: torch.Tensor) -> list[str]:
    """The characters of cell ids, as text rows."""
    return [bytes(row).decode() for row in (cells % 256).numpy().astype(np.uint8)]


def test_crop_is_the_screen_around_the_cursor_blank_off_the_screen():
    env = make_env("score", seed=7)
    start, _ = env.reset()
    # Seed 7 starts the Monk at (18, 53) next to his kitten, in a room's top-left corner:
    #   row 17  --+-+-     (columns 50..55)
    #   row 18  |.f@..
    #   row 19  |..({|
    #   row 20  ------
    assert start["tty_cursor"].tolist() == [18, 53]
    cells = screen_cells([start])[0]
    rows = text(cells)
    # Crop cell (6, 6) is the cursor's; crop cell (i, j) is screen cell (12 + i, 47 + j).
    assert rows[6][6] == "@" and cells[6, 6] // 256 == start["tty_colors"][18, 53] != 0
    assert [row[3:9] for row in rows[5:9]] == ["--+-+-", "|.f@..", "|..({|", "------"]
    assert rows[0] == " " * 12  # screen row 12: dark
    assert rows[11] == " " * 12  # screen row 23, columns 47..58: past the bottom line's end

    # A prompt puts the cursor on the message line, at column 38: the six crop rows above
    # the screen are blank (space, colour 0).
    eat = [int(a) for a in env.unwrapped.actions].index(EAT)
    prompt, *_ = env.step(eat)
    env.close()
    assert prompt["tty_cursor"].tolist() == [0, 38]
    cells = screen_cells([prompt])[0]
    assert (cells[:6] == ord(" ")).all()
    assert text(cells)[6] == "r ?*]       "  # "What do you want to eat? [fghi or ?*]": 32..43

    # An odd size at the bottom-right corner: blank after the last row and column.
    corner = dict(prompt, tty_cursor=np.array([23, 79], np.uint8))
    rows = text(screen_cells([corner], size=5)[0])
    bottom = [bytes(row).decode() for row in prompt["tty_chars"][21:24, 77:80]]
    assert [row[:3] for row in rows[:3]] == bottom
    assert [row[3:] for row in rows] == ["  "] * 5 and rows[3:] == [" " * 5] * 2

    # A batch: each observation cropped around its own cursor.
    batch = screen_cells([start, prompt, corner], size=5)
    alone = [screen_cells([o], size=5)[0] for o in (start, prompt, corner)]
    assert torch.equal(batch, torch.stack(alone))


def test_crop_gru_module_acts_and_trains_with_recurrent_shapes():
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    torch.manual_seed(0)  # the weights, so the sampled game is the same in every session
    env = make_env("score")
    spec = module_spec(TINY_CROP_GRU, rollout_fragment_length=16)
    spec.observation_space, spec.action_space = env.observation_space, env.action_space
    env.close()
    module = spec.build()
    module.make_target_networks()
    assert module.is_stateful()
    assert set(module.get_initial_state()) == {"h"}

    def play(policy: AgentPolicy) -> tuple[list[int], list[dict]]:
        """A short game of seed 3, the policy sampling from seed 5."""
        env = make_env("score", seed=3, max_episode_steps=40)
        observation, _ = env.reset()
        policy.reset(5)
        actions, seen = [], [observation]
        while True:
            actions.append(policy.act(observation))
            observation, _, terminated, truncated, _ = env.step(actions[-1])
            seen.append(observation)
            if terminated or truncated:
                env.close()
                return actions, seen

    policy = AgentPolicy(module)
    actions, seen = play(policy)
    assert len(actions) == 40
    assert policy.state["h"].shape == (1, 16) and policy.state["h"].abs().sum() > 0
    # The same seeds, the same game.
    again, replayed = play(AgentPolicy(module))
    assert again == actions
    assert all(
        (a["tty_chars"] == b["tty_chars"]).all() for a, b in zip(seen, replayed, strict=True)
    )

    # Training-shaped inputs [B, T, ...] give training-shaped outputs, values included.
    obs = {k: torch.from_numpy(np.stack([o[k] for o in seen[:8]])) for k in seen[0]}
    batch = {
        Columns.OBS: {k: v.reshape(2, 4, *v.shape[1:]) for k, v in obs.items()},
        Columns.STATE_IN: {"h": torch.zeros(2, 16)},
    }
    out = module.forward_train(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (2, 4, 23)
    assert out[Columns.STATE_OUT]["h"].shape == (2, 16)
    assert module.compute_values(batch).shape == (2, 4)
    assert module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS].shape == (2, 4, 23)


@pytest.mark.parametrize("appo_loss", ["rllib", "sample_factory"])
def test_appo_learner_updates_the_crop_gru_module_on_sampled_fragments(appo_loss):
    """An APPO learner built as training builds it takes one update on fragments sampled
    by RLlib's own env runner (in this process). Sample Factory's loss never runs the
    target network, and on fragments the learner's own weights sampled its policy ratio
    is 1."""
    from ray.rllib.core.learner.learner import Learner
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    config = TrainingConfig(
        algorithm="appo",
        num_env_runners=0,
        num_envs_per_env_runner=1,
        rollout_fragment_length=16,
        train_batch_size=32,
        max_episode_steps=100,
        agent=TINY_CROP_GRU,
        appo_loss=appo_loss,
    )
    algo_config = algorithm_config("score", config, seed=0, epoch=0, settings=None)
    env = make_env("score")
    learner = algo_config.build_learner(env=env)
    env.close()
    assert type(learner._learner_thread_in_queue) is WaitingCircularBuffer
    module = learner.module["default_policy"]
    if appo_loss == "sample_factory":
        module.forward_target = None
    runner = SingleAgentEnvRunner(config=algo_config, worker_index=0)
    runner.set_state({"rl_module": learner.module.get_state()})
    episodes = runner.sample(num_timesteps=32)
    before = [p.detach().clone() for p in module.parameters()]
    # The base `Learner.update` is the step APPO's learner thread takes on each batch;
    # calling it here makes the step synchronous.
    results = Learner.update(
        learner, episodes=episodes, timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: 32}
    )
    after = list(module.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert all(torch.isfinite(p).all() for p in after)
    if appo_loss == "sample_factory":
        assert results["default_policy"]["mean_rho"].peek() == pytest.approx(1.0, abs=1e-5)
    runner.stop()
    learner.shutdown()


def test_use_lstm_from_older_specs_is_read_as_the_core():
    assert AgentConfig(use_lstm=True).core == "lstm"
    assert AgentConfig(use_lstm=False).core == "mlp"
    assert AgentConfig(use_lstm=False, core="mlp").model_dump()["core"] == "mlp"
    assert "use_lstm" not in AgentConfig(use_lstm=False).model_dump()
    assert not AgentConfig(core="mlp").recurrent and AgentConfig(core="gru").recurrent
    with pytest.raises(ValidationError, match="conflicts with core"):
        AgentConfig(use_lstm=True, core="gru")


def uncut_message_code(trunk: NetHackTrunk, message: torch.Tensor) -> torch.Tensor:
    """The message encoder's formula over all `message_length` bytes, nothing cut."""
    message = message[:, : trunk.config.message_length].long()
    present = (message != 0).unsqueeze(1).float()
    embedded = trunk.message_bytes(message).transpose(1, 2)
    conv = torch.relu(trunk.message_conv(embedded))
    return trunk.message_head((conv * present).sum(-1) / present.sum(-1).clamp(min=1.0))


def test_message_code_skips_the_nul_tail_without_changing_codes_or_gradients():
    # Real messages from play, an empty one, and one whose last byte is the line's last.
    env = make_env("score", seed=3)
    obs, _ = env.reset()
    messages = [obs["message"]]
    for action in [0, 1, 2, 3, 4, 5, 6, 7] * 4:
        obs, *_ = env.step(action)
        messages.append(obs["message"])
    env.close()
    full = np.zeros(256, dtype=np.uint8)
    full[-5:] = list(b"dead!")
    message = torch.from_numpy(np.stack([*messages, np.zeros(256, np.uint8), full]))
    assert 0 < int((message[:-2] != 0).sum(1).max()) < 100  # NetHack's lines are short
    config = AgentConfig(message_length=256, message_kernel=5)
    torch.manual_seed(0)
    trunk = NetHackTrunk(config, blstats_size=27)

    for batch in (message[:-1], message, message[-2:-1]):  # short lines, the full one, empty
        trunk.zero_grad()
        cut = trunk.message_code(batch)
        cut.square().sum().backward()
        grads = [p.grad.clone() for p in trunk.parameters() if p.grad is not None]
        trunk.zero_grad()
        uncut = uncut_message_code(trunk, batch)
        uncut.square().sum().backward()
        torch.testing.assert_close(cut, uncut, rtol=1e-5, atol=1e-6)
        expected = [p.grad for p in trunk.parameters() if p.grad is not None]
        assert len(grads) == len(expected) == 5  # embedding, conv and head weights and biases
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_message_kernel_must_be_odd():
    with pytest.raises(ValidationError, match="odd"):
        AgentConfig(message_kernel=4)
