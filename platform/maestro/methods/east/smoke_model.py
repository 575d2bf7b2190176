"""The smoke model: a tiny causal transformer trained from scratch on bandit transcripts.

No pretrained language model can be downloaded offline, so the smoke preset makes one.
Behaviour policies that explore to different degrees (greedy, epsilon-greedy, Thompson
sampling, uniform) play the experiment's text bandit; each turn becomes one example, the
prompt the agent would see followed by the policy's answer, in which the thought commits
to an arm before the action:

    Thought: blue has paid the most so far. Action: blue

A byte-level BPE tokenizer is trained on those texts, and a small `LlamaForCausalLM` is
fitted to every token of them, history included: predicting the next pull of a history
makes the model infer, at every position, how the policy that wrote it explores. Its
in-context behaviour is then a mixture of the policies, and that inferred exploration is
the kind of latent that EAST steers. The folder it saves is an
ordinary Hugging Face checkpoint, loaded by the same code as any other model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maestro.envs.text_bandit import TextBandit, TextBanditConfig
from maestro.methods.east.config import SmokeModelConfig

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
OPENINGS = ("none", "honest", "misleading")
THOMPSON_PRIOR_STD = 1.0  # the Gaussian prior of Thompson sampling, around the range's mid


def choose(policy: str, bandit: TextBandit, rng: np.random.Generator) -> int:
    """The arm `policy` pulls after `bandit`'s history."""
    count = len(bandit.config.arms)
    greedy = sorted(bandit.greedy_arms())
    if policy == "uniform" or not greedy:
        return int(rng.integers(count))
    if policy.startswith("epsilon_") and rng.random() < float(policy.removeprefix("epsilon_")):
        return int(rng.integers(count))
    if policy == "thompson":
        low, high = bandit.config.mean_range
        noise = max(bandit.config.noise, 1e-3)
        draws = []
        for arm in range(count):
            rewards = [reward for pulled, reward in bandit.history if pulled == arm]
            precision = THOMPSON_PRIOR_STD**-2 + len(rewards) / noise**2
            mean = ((low + high) / 2 * THOMPSON_PRIOR_STD**-2 + sum(rewards) / noise**2) / precision
            draws.append(rng.normal(mean, precision**-0.5))
        return int(np.argmax(draws))
    return int(rng.choice(greedy))


def answer(bandit: TextBandit, arm: int) -> str:
    """The answer written for pulling `arm`, after the prompt's `Thought:`: a thought
    naming it, then the action."""
    name = bandit.config.arms[arm]
    if not bandit.history:
        thought = f"I know nothing yet, so I try {name}."
    elif arm in bandit.greedy_arms():
        thought = f"{name} has paid the most so far."
    elif all(pulled != arm for pulled, _ in bandit.history):
        thought = f"I have not tried {name} yet."
    else:
        thought = f"{name} may be better than it looks."
    return f" {thought} Action: {name}"


def policy_names(shares: dict[str, float], count: int, rng: np.random.Generator) -> list[str]:
    """`count` policy names drawn with the given shares."""
    names = list(shares)
    weights = np.array([shares[name] for name in names], dtype=float)
    return [names[i] for i in rng.choice(len(names), size=count, p=weights / weights.sum())]


def transcripts(
    env: TextBanditConfig, cfg: SmokeModelConfig, seed: int
) -> list[tuple[str, str, str]]:
    """(policy, prompt, answer) for every turn of `cfg.transcripts` episodes, each played by
    one policy on a bandit with a random opening."""
    rng = np.random.default_rng(seed)
    examples = []
    for policy in policy_names(cfg.policies, cfg.transcripts, rng):
        opening = OPENINGS[int(rng.integers(len(OPENINGS)))]
        bandit = TextBandit(env.model_copy(update={"opening": opening}), rng)
        while not bandit.done:
            arm = choose(policy, bandit, rng)
            examples.append((policy, bandit.prompt(), answer(bandit, arm)))
            bandit.step(arm)
    return examples


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer fitted to `texts`, in transformers' fast wrapper."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def train_smoke_model(
    env: TextBanditConfig, cfg: SmokeModelConfig, seed: int, folder: str | Path, progress=None
) -> dict[str, float]:
    """Fit the smoke model and save it (weights and tokenizer) in `folder`; returns the
    mean loss of the first and the last epoch. `progress`, a tqdm-like bar, is
    advanced once per batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    examples = transcripts(env, cfg, seed)
    tokenizer = train_tokenizer([p + a for _, p, a in examples[:20000]], cfg.vocab_size)
    eos = tokenizer.eos_token_id
    rows = []
    for _, prompt, text in examples:
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer_ids = tokenizer(text)["input_ids"] + [eos]
        rows.append(prompt_ids + answer_ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=4 * cfg.hidden_size,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads,
            max_position_embeddings=max(len(ids) for ids in rows) * 2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    batches = -(-len(rows) // cfg.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=cfg.epochs * batches, pct_start=0.1
    )
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        epoch = []
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), cfg.batch_size):
            batch = [rows[i] for i in order[start : start + cfg.batch_size]]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = labels[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            epoch.append(loss.item())
            if progress is not None:
                progress.update(1)
        losses.append(float(np.mean(epoch)))
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]}
