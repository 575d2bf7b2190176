"""Steered against unsteered generation: tokens per second of the same model, in the same run.

The model is a Llama with random weights built here (nothing is downloaded), of a size
given on the command line; the steering vector is random with the norm of the chosen
layer's activations. Both sides run the `hf` backend's own path (`HfAnnotator.generate`,
batched, sampling at temperature 1) on the same prompts, and every answer is forced to
exactly `--tokens` new tokens (a random model's end token would otherwise cut answers at
random lengths), so both sides generate the same number of tokens. The sides alternate,
`--rounds` times each, steered inside `maestro.methods.east.steering.steering` (a forward
hook that adds the vector at the layer); the rate of each side is its total tokens over
its total seconds, which cancels a machine's drift.

    python bench/east_steering.py [--hidden 256] [--layers 8] [--batch 16] [--tokens 64]
                                  [--rounds 5] [--device cpu] [--dtype float32]

Goal: steered tokens/s at least 0.95 x unsteered.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maestro.envs.text_bandit import TextBandit, TextBanditConfig
from maestro.methods.east.smoke_model import train_tokenizer
from maestro.methods.east.steering import last_token_activations, middle_layer, steering


def build_model(folder: Path, hidden: int, layers: int, dtype: str) -> None:
    """A random-weight Llama with a tokenizer fitted to text-bandit prompts, in `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(0)
    prompts = [TextBandit(TextBanditConfig(opening="honest"), rng).prompt() for _ in range(50)]
    tokenizer = train_tokenizer(prompts, 512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    from maestro.llm.backends import AnnotatorConfig, HfAnnotator

    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder), args.hidden, args.layers, args.dtype)
        agent = HfAnnotator(
            AnnotatorConfig(
                backend="hf", model=folder, chat=False, max_tokens=args.tokens,
                temperature=1.0, hf={"device": args.device, "dtype": args.dtype,
                                     "batch_size": args.batch},
            )
        )  # fmt: skip
    rng = np.random.default_rng(1)
    prompts = [TextBandit(TextBanditConfig(opening="honest"), rng).prompt()
               for _ in range(args.batch)]  # fmt: skip
    layer = middle_layer(agent.model)
    h = last_token_activations(agent.model, agent.tokenizer, prompts, layer)
    u = torch.randn(h.shape[1])
    u = u / u.norm() * float(np.linalg.norm(h, axis=1).mean())
    # Every answer exactly `tokens` long: the end token is not allowed before.
    agent.model.generation_config.min_new_tokens = args.tokens

    def timed() -> float:
        start = time.perf_counter()
        agent.generate(prompts)
        return time.perf_counter() - start

    timed()  # warm-up: allocations, kernels
    seconds = {"unsteered": 0.0, "steered": 0.0}
    for _ in range(args.rounds):
        seconds["unsteered"] += timed()
        with steering(agent.model, layer, 4.0 * u):
            seconds["steered"] += timed()
    tokens = args.rounds * args.batch * args.tokens
    rates = {side: tokens / s for side, s in seconds.items()}
    ratio = rates["steered"] / rates["unsteered"]
    print(f"Llama hidden {args.hidden}, {args.layers} layers, steering layer {layer}, "
          f"{args.device} {args.dtype}; batch {args.batch} x {args.tokens} tokens, "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"unsteered: {rates['unsteered']:.1f} tokens/s")
    print(f"steered:   {rates['steered']:.1f} tokens/s")
    print(f"ratio steered / unsteered: {ratio:.3f}")
    print(f"goal: at least 0.95 ({'met' if ratio >= 0.95 else 'not met'})")


if __name__ == "__main__":
    main()
