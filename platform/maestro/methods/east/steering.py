"""Entropic activation steering: the entropy-weighted steering vector and the hook that adds
it (Rahn, D'Oro, Bellemare, "Controlling Large Language Model Agents with Entropic
Activation Steering", 2024, arXiv:2406.00244).

For prompts p_i the agent met, H_i is the entropy of the action distribution of K sampled
answers, and h_i the residual stream at the output of decoder layer l at the last prompt
token. The steering vector is

    u = sum_i H_i (h_i - mean_j h_j) / sum_i H_i        (centred; uncentred: without the mean)

and steering adds beta * u to layer l's output at every position of every forward pass.
Both reading h_i and steering are forward hooks on the model's own decoder layers: no fork
of the model code, and any Hugging Face decoder (Llama, Mistral, Mixtral, GPT-2, ...)
works.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

# Where Hugging Face causal LMs keep their decoder layers.
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder layers, in order."""
    for path in LAYER_PATHS:
        module = model
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__}: no decoder layers at {', '.join(LAYER_PATHS)}")


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """Decoder layer `layer` (0-based); a clear error past the model's depth."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer}: the model has decoder layers 0 to {len(layers) - 1}")
    return layers[layer]


def middle_layer(model: torch.nn.Module) -> int:
    """The middle decoder layer, the lower of two middles: always one with a layer after
    it (a 2-layer model's second layer writes straight into the logits)."""
    return (len(decoder_layers(model)) - 1) // 2


def action_entropy(actions: Sequence[int | None], num_arms: int) -> float:
    """The entropy (nats) of the empirical distribution of the valid actions among
    `actions`; NaN when none is valid."""
    counts = np.bincount([a for a in actions if a is not None], minlength=num_arms)
    if counts.sum() == 0:
        return float("nan")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def steering_vector(h: np.ndarray, H: np.ndarray, centred: bool = True) -> np.ndarray:
    """u = sum_i H_i (h_i - mean h) / sum_i H_i for activations `h` (n, d) and entropies
    `H` (n,); without the mean when not `centred`."""
    if H.sum() <= 0:
        raise ValueError("every prompt's action entropy is zero: no direction to steer")
    centre = h.mean(axis=0) if centred else 0.0
    return (H[:, None] * (h - centre)).sum(axis=0) / H.sum()


def hidden_of(output):
    """A decoder layer's hidden states: its output, or the output's first element."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def steering(model: torch.nn.Module, layer: int, vector: np.ndarray | torch.Tensor) -> Iterator:
    """Inside the block, `vector` is added to decoder layer `layer`'s output at every
    position; the hook is removed on leaving, even on an error."""
    module = decoder_layer(model, layer)
    parameter = next(model.parameters())
    added = torch.as_tensor(vector).to(device=parameter.device, dtype=parameter.dtype)

    def add(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] + added, *output[1:])
        return output + added

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def last_token_activations(
    model: torch.nn.Module, tokenizer, prompts: Sequence[str], layer: int, batch_size: int = 32
) -> np.ndarray:
    """Decoder layer `layer`'s output at each prompt's last token, (len(prompts), d), in
    float32. Prompts are batched with left padding, positions counted from each prompt's
    first real token, so a row equals the prompt run alone."""
    module = decoder_layer(model, layer)
    device = next(model.parameters()).device
    caught: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _module, _inputs, output: caught.append(hidden_of(output)[:, -1].float().cpu())
    )
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = tokenizer(
                list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
            ).to(device)
            positions = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            model(**encoded, position_ids=positions)
    finally:
        handle.remove()
        tokenizer.padding_side = side
    return torch.cat(caught).numpy()
