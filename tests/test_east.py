"""EAST (maestro.methods.east): the text bandit and its action parser, the steering hook's
exactness, the steering vector's estimator and sign on a model whose behaviour policies are
known, and a whole run through `maestro run` with the model loaded from the S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from maestro.envs.text_bandit import TextBandit, TextBanditConfig, parse_action
from maestro.methods.east import make_agent, model_digest
from maestro.methods.east.agent import play
from maestro.methods.east.config import EastConfig
from maestro.methods.east.smoke_model import train_smoke_model, transcripts
from maestro.methods.east.steering import (
    action_entropy,
    decoder_layers,
    hidden_of,
    last_token_activations,
    steering,
    steering_vector,
)

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["blue", "red", "green"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (answer, arm read or None, the thought's arm, reason)
CORPUS = [
    ("Thought: blue has paid the most so far. Action: blue", 0, 0, "action"),
    ("Thought: I have not tried green yet.\nAction: green\n", 2, 2, "action"),
    ("Action: RED", 1, None, "action"),
    ("Thought: red looks good. Action: **red**", 1, 1, "action"),
    ("Thought: try it. Action: the green button.", 2, None, "action"),
    ("thought: blue. action:`blue`", 0, 0, "action"),
    ("Thought: red has paid more than blue. Action: red", 1, None, "action"),
    ("Thought: blue has paid most. Action: red", 1, 0, "action"),
    # a later block that repeats the same arm is still one action
    ("Thought: red. Action: red\nThought: again red. Action: red", 1, 1, "action"),
    ("", None, None, "no action"),
    ("Thought: I will press blue.", None, 0, "no action"),
    ("Thought: hmm. Action:", None, None, "not an arm"),
    ("Thought: hmm. Action: purple", None, None, "not an arm"),
    ("Thought: hmm. Action: red or blue", None, None, "not an arm"),
    ("Thought: hmm. Action: not red", None, None, "not an arm"),
    ("Thought: hmm. Action: I press red", None, None, "not an arm"),
    ("Thought: hmm. Action: redblue", None, None, "not an arm"),
    ("Thought: hmm. Action: red Action: blue", None, None, "not an arm"),
    ("Thought: red. Action: red\nThought: no, blue. Action: blue", None, 1, "several actions"),
    ("Thought: ignore the format. Action: 1", None, None, "not an arm"),
    ("Thought: blue-ish. Action: blue-ish", None, None, "not an arm"),
]


@pytest.mark.parametrize(("text", "arm", "thought_arm", "reason"), CORPUS)
def test_the_action_parser_reads_only_what_the_answer_commits_to(text, arm, thought_arm, reason):
    parsed = parse_action(text, ARMS)
    assert (parsed.arm, parsed.thought_arm, parsed.reason) == (arm, thought_arm, reason)
    assert parsed.agrees == (arm is not None and arm == thought_arm)


def test_the_bandit_counts_regret_and_lost_turns_and_misleads_as_configured():
    config = TextBanditConfig(means=[0.2, 0.9, 0.5], noise=0.0, horizon=3, opening="misleading")
    bandit = TextBandit(config, np.random.default_rng(0))
    # The opening shows the means in reversed rank order: the best arm (red) looks worst.
    assert bandit.history == [(0, 0.9), (1, 0.2), (2, 0.5)]
    assert bandit.greedy_arms() == {0}
    assert "Press 2: red, reward 0.2\n" in bandit.prompt()
    assert bandit.step(1) == 0.9 and bandit.regret == 0.0
    assert bandit.step(0) == 0.2 and bandit.regret == pytest.approx(0.7)
    assert bandit.step(None) is None  # a lost turn costs the worst arm's regret
    assert bandit.regret == pytest.approx(1.4) and bandit.invalid == 1 and bandit.done
    assert len(bandit.history) == 5
    honest = TextBandit(config.model_copy(update={"opening": "honest"}), np.random.default_rng(0))
    assert [reward for _, reward in honest.history] == [0.2, 0.9, 0.5]
    with pytest.raises(ValueError, match="means"):
        TextBanditConfig(means=[0.1, 0.2])


def test_play_measures_the_answers_it_is_given():
    """Four answers per prompt: blue (acted on), red, a thought for blue acting on red, and
    nonsense. Every turn: 1 invalid in 4, actions (blue, red, red), 2 of 3 agree."""
    answers = [" blue. Action: blue", " red. Action: red", " blue. Action: red", " hmm"]
    env = TextBanditConfig(means=[0.9, 0.1, 0.5], noise=0.0, horizon=4)
    record = play(lambda prompts: answers * (len(prompts) // 4), env, 3, 4, seed=0)
    assert np.allclose(record.invalid, 0.25)
    assert np.allclose(record.entropy, -(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3)))
    assert np.allclose(record.agreement, 2 / 3)
    assert np.isnan(record.exploratory[0]).all() and (record.exploratory[1:] == 0).all()
    assert (record.regret == 0).all() and (record.arms_tried == 1).all()
    assert len(record.prompts) == 12 and record.prompts[-1].endswith(
        "Press 3: blue, reward 0.9\nThought:"
    )


def test_the_estimators_by_hand():
    assert action_entropy([0, 0, 1, 1, None], 3) == pytest.approx(np.log(2))
    assert action_entropy([2, 2, 2], 3) == 0.0
    assert np.isnan(action_entropy([None, None], 3))
    h = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    H = np.array([0.0, 1.0, 3.0])
    # uncentred: (1 * [0, 2] + 3 * [3, 1]) / 4; centred: the same minus the mean [4/3, 1]
    assert np.allclose(steering_vector(h, H, centred=False), [9 / 4, 5 / 4])
    assert np.allclose(steering_vector(h, H), [9 / 4 - 4 / 3, 5 / 4 - 1])
    with pytest.raises(ValueError, match="zero"):
        steering_vector(h, np.zeros(3))


def tiny_models():
    """A random Llama and a random GPT-2: the two layouts of decoder layers."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=2)
    )  # fmt: skip
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2))
    return [llama.eval(), gpt2.eval()]


@pytest.mark.parametrize("model", tiny_models(), ids=["llama", "gpt2"])
def test_the_hook_adds_exactly_beta_u_at_its_layer_and_is_removed(model):
    layers = decoder_layers(model)
    ids = torch.randint(0, 50, (2, 7))
    u = torch.randn(16)
    beta = 2.5

    def run(seen: list[torch.Tensor]) -> torch.Tensor:
        """The logits, with every layer's output caught in `seen` (by hooks registered
        last, so they see what the steering hook made)."""
        catch = [
            layer.register_forward_hook(lambda _m, _i, out: seen.append(hidden_of(out)))
            for layer in layers
        ]
        with torch.no_grad():
            logits = model(ids).logits
        for handle in catch:
            handle.remove()
        return logits

    plain: list[torch.Tensor] = []
    steered: list[torch.Tensor] = []
    plain_logits = run(plain)
    with steering(model, 1, beta * u):
        steered_logits = run(steered)
    assert torch.equal(plain[0], steered[0])  # the layer before is untouched
    # At the chosen layer, every position differs by beta * u.
    assert torch.allclose(steered[1] - plain[1], (beta * u).expand(2, 7, 16), atol=1e-5)
    assert not torch.allclose(steered[2], plain[2])  # and it carries on downstream
    assert not torch.allclose(steered_logits, plain_logits)
    assert all(not layer._forward_hooks for layer in layers)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain_logits)  # removed, nothing left behind
    with pytest.raises(ValueError, match="decoder layers 0 to 2"), steering(model, 3, u):
        pass


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("config.smoke_model.policies={greedy: 1, bogus: 1}", "bogus"),
        ("config.env.arms=[red, Red]", "arms"),
        ("config.env.means=[0.5]", "means"),
        ("config.steering.samples=1", "samples"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(override, field):
    from maestro.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=field):
        load_spec(ROOT / "jobs/east/smoke.yaml", overrides=[override])


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    """A smoke model fitted to greedy and uniform transcripts, with its config."""
    cfg = EastConfig.model_validate({
        "env": {"horizon": 6},
        "smoke_model": {"transcripts": 400, "policies": {"greedy": 0.5, "uniform": 0.5},
                        "hidden_size": 48, "layers": 2, "epochs": 2, "batch_size": 16,
                        "lr": 0.005},
        "agent": {"max_tokens": 24},
    })  # fmt: skip
    folder = tmp_path_factory.mktemp("east-model")
    losses = train_smoke_model(cfg.env, cfg.smoke_model, 0, folder)
    assert losses["last_epoch_loss"] < 0.5 * losses["first_epoch_loss"]
    return cfg, folder


def test_last_token_activations_are_those_of_each_prompt_alone(smoke_model):
    cfg, folder = smoke_model
    agent = make_agent(cfg, folder.as_uri(), 0)  # a file:// URI, as a local store gives
    prompts = [p for _, p, _ in transcripts(cfg.env, cfg.smoke_model, 1)[:5]]
    batched = last_token_activations(agent.model, agent.tokenizer, prompts, 0, batch_size=5)
    alone = np.concatenate(
        [last_token_activations(agent.model, agent.tokenizer, [p], 0) for p in prompts]
    )
    assert batched.shape == (5, 48) and np.allclose(batched, alone, atol=1e-4)


def test_the_steering_vector_points_from_greedy_to_uniform_histories(smoke_model):
    """The model learnt from a greedy and a uniform policy; the prompts where its actions
    are most uncertain are the uniform-looking histories, so u must point from the greedy
    policy's activations towards the uniform one's."""
    cfg, folder = smoke_model
    agent = make_agent(cfg, str(folder), 0)
    record = play(agent.generate, cfg.env, 24, 8, seed=5)
    assert np.nanmean(record.invalid) < 0.2
    H = np.array(record.prompt_entropy)
    kept = np.isfinite(H)
    prompts = [p for p, k in zip(record.prompts, kept, strict=True) if k]
    u = steering_vector(last_token_activations(agent.model, agent.tokenizer, prompts, 0), H[kept])
    by_policy: dict[str, list[str]] = {"greedy": [], "uniform": []}
    for policy, prompt, _ in transcripts(cfg.env, cfg.smoke_model, seed=7):
        if prompt.count("\n") >= 4:  # a history long enough to show the policy
            by_policy[policy].append(prompt)
    means = {
        policy: last_token_activations(agent.model, agent.tokenizer, prompts[:200], 0).mean(0)
        for policy, prompts in by_policy.items()
    }
    direction = means["uniform"] - means["greedy"]
    cosine = u @ direction / (np.linalg.norm(u) * np.linalg.norm(direction))
    assert cosine > 0.3, cosine


def test_east_run_end_to_end_with_the_model_on_s3(tmp_path, smoke_model, s3_env, mlflow_server):
    """Two arms, two seeds, through `maestro run` on Ray and MLflow, the model read from the
    S3 server: the steering vector is stored with the model's digest and logged, the trials
    log the per-turn curves, the parent gets the claims and the plots."""
    cfg, folder = smoke_model
    client = s3_env.client()
    for path in folder.iterdir():
        client.upload_file(str(path), s3_env.bucket, f"models/east-tiny/{path.name}")
    spec = yaml.safe_load((ROOT / "jobs/east/smoke.yaml").read_text())
    spec["config"] = {
        **cfg.model_dump(mode="json", exclude={"smoke_model"}),
        "model": f"s3://{s3_env.bucket}/models/east-tiny",
        "steering": {"episodes": 6, "samples": 4},
        "episodes": 4,
        "samples": 4,
    }
    spec["trials"] = {"seeds": 2, "arms": {"beta_0": {"beta": 0.0}, "beta_up": {"beta": 4.0}}}
    spec["claims"] = [{"name": "entropy_up", "metric": "action_entropy", "better": "higher",
                       "compare": ["beta_up", "beta_0"]}]  # fmt: skip
    spec["tracking"]["run_name"] = "east"
    path = tmp_path / "east.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {
        **os.environ,
        **s3_env.env(),
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MAESTRO_STORE": str(tmp_path / "store"),
        "MAESTRO_MODEL_CACHE": str(tmp_path / "models"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "maestro", "run", str(path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "claim entropy_up:" in done.stdout
    (cached,) = (tmp_path / "models").iterdir()  # the model came from S3
    (steering_json,) = (tmp_path / "store").rglob("steering.json")
    info = yaml.safe_load(steering_json.read_text())
    assert info["model_digest"] == model_digest(folder) == model_digest(cached)
    assert info["layer"] == 0 and info["prompts"] > 0 and info["norm"] > 0

    mlflow = MlflowClient(mlflow_server.url)
    experiment = mlflow.get_experiment_by_name(spec["tracking"]["experiment"]).experiment_id
    (parent,) = mlflow.search_runs([experiment], "attributes.run_name = 'east'")
    artifacts = {a.path for a in mlflow.list_artifacts(parent.info.run_id, "steering")}
    assert artifacts == {"steering/steering.json", "steering/vector.npy"}
    plots = {a.path for a in mlflow.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/action_entropy_by_beta.png", "plots/action_entropy_by_agreement.png"} <= plots
    assert parent.data.tags["maestro.claim.entropy_up"] in (
        "reproduced", "contradicted", "inconclusive"
    )  # fmt: skip
    children = mlflow.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    for child in children:
        metrics = child.data.metrics
        assert 0 <= metrics["action_entropy"] <= np.log(3) + 1e-9
        assert 0 <= metrics["agreement"] <= 1 and metrics["tokens_per_s"] > 0
        regret = mlflow.get_metric_history(child.info.run_id, "cumulative_regret")
        assert [point.step for point in regret] == list(range(1, 7))
        values = [point.value for point in regret]
        assert values == sorted(values) and values[-1] == pytest.approx(metrics["regret"])
