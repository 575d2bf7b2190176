"""Motif's reward model with the paper's encoder: a character-level CNN over the message
bytes (`RewardModelConfig(encoder="char_cnn")`), beside the default hashed bag."""

import io

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from maestro.feedback.reward_model import (
    CaptionRewardNet,
    Normalisation,
    RewardModel,
    RewardModelConfig,
    caption_bytes,
)
from maestro.feedback.reward_training import bradley_terry_loss

# Small enough for a CPU test: 64 bytes, two convolutions of 16 channels, a 32-wide head.
TINY_CNN = RewardModelConfig(
    encoder="char_cnn",
    message_length=64,
    byte_embedding_dim=8,
    conv_channels=[16, 16],
    conv_kernel_sizes=[5, 3],
    conv_pool_sizes=[2, 1],
    mlp_widths=[32],
)
TINY_BAG = RewardModelConfig(buckets=256, embedding_dim=8, hidden=8)


def tiny_net(config: RewardModelConfig = TINY_CNN, seed: int = 0) -> CaptionRewardNet:
    torch.manual_seed(seed)
    return CaptionRewardNet(config).eval()


@torch.no_grad()
def rewards(net: CaptionRewardNet, captions: list[str]) -> np.ndarray:
    return net(captions).numpy()


def test_captions_become_their_latin1_bytes_padded_or_cut():
    codes = caption_bytes(["ab", "", "\xe9" * 6], 4)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[97, 98, 0, 0], [0, 0, 0, 0], [0xE9] * 4]
    assert caption_bytes([], 4).shape == (0, 4)


def test_paper_sizes_are_the_char_cnn_defaults():
    config = RewardModelConfig(encoder="char_cnn")
    assert (config.message_length, config.byte_embedding_dim) == (256, 32)
    assert config.mlp_widths == [128, 256, 512]
    # The bag stays the default encoder, with its sizes of before.
    assert RewardModelConfig().encoder == "hashed_bag"


def test_char_cnn_gives_one_finite_reward_per_caption():
    net = tiny_net()
    long = "You hear the footsteps of a guard on patrol. " * 4  # past message_length
    captions = ["You kill the newt!", "", long, long[:64]]
    out = rewards(net, captions)
    assert out.shape == (4,)
    assert np.isfinite(out).all()
    # A caption is cut to its first `message_length` bytes.
    assert out[2] == out[3]
    assert rewards(net, []).shape == (0,)


def test_char_cnn_is_deterministic_given_the_torch_seed():
    captions = ["You kill the newt!", "It's solid stone.", ""]
    first = rewards(tiny_net(seed=3), captions)
    assert np.array_equal(first, rewards(tiny_net(seed=3), captions))
    assert not np.array_equal(first, rewards(tiny_net(seed=4), captions))


def test_char_cnn_reads_the_order_of_the_characters():
    forward, backward = rewards(tiny_net(), ["You kill it!", "!ti llik uoY"])
    assert abs(forward - backward) > 1e-6


def test_config_rejects_a_convolution_stack_that_does_not_fit():
    with pytest.raises(ValidationError, match="one entry per convolution"):
        RewardModelConfig(encoder="char_cnn", conv_channels=[8], conv_kernel_sizes=[3, 3])
    with pytest.raises(ValidationError, match="leave no position"):
        RewardModelConfig(encoder="char_cnn", message_length=8)


@pytest.mark.parametrize("config", [TINY_BAG, TINY_CNN], ids=["hashed_bag", "char_cnn"])
def test_stored_model_round_trips_to_identical_rewards(config):
    model = RewardModel(tiny_net(config), Normalisation(mean=0.1, std=2.0, threshold=0.5))
    again = RewardModel.from_bytes(model.to_bytes())
    captions = ["You kill the newt!", "", "You see here 3 gold pieces."]
    assert again.net.config == config
    assert again.norm == model.norm
    assert np.array_equal(again.raw(captions), model.raw(captions))


def test_model_stored_before_the_encoder_choice_loads_as_the_bag():
    net = tiny_net(TINY_BAG)
    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": net.state_dict(),
            "config": {"buckets": 256, "embedding_dim": 8, "hidden": 8},
            "normalisation": {"mean": 0.0, "std": 1.0, "threshold": 0.0},
        },
        buffer,
    )
    loaded = RewardModel.from_bytes(buffer.getvalue())
    assert loaded.net.config == TINY_BAG
    captions = ["You kill the newt!", ""]
    assert np.array_equal(loaded.raw(captions), RewardModel(net, loaded.norm).raw(captions))


def preference_set(rng: np.random.Generator, pairs: int) -> tuple[list[str], list[str], np.ndarray]:
    """Pairs of one caption with "gold" and one without, on random sides; the target is
    P(caption 1 preferred), 1 where the gold caption is first."""
    openings = ["", "You see here ", "There is ", "You kill ", "Things that are here: "]
    counts = ["", "a ", "the ", "2 ", "17 "]
    endings = ["", ".", "!", " here.", " on the floor."]
    things = ["newt", "dagger", "pieces of glass", "scroll", "jackal", "fountain", "silver ring"]

    def line(thing: str) -> str:
        return f"{rng.choice(openings)}{rng.choice(counts)}{thing}{rng.choice(endings)}"

    golds = [line(f"gold {rng.choice(['pieces', 'ring', 'amulet'])}") for _ in range(pairs)]
    others = [line(rng.choice(things)) for _ in range(pairs)]
    first = rng.random(pairs) < 0.5
    caption_1 = [g if f else o for g, o, f in zip(golds, others, first, strict=True)]
    caption_2 = [o if f else g for g, o, f in zip(golds, others, first, strict=True)]
    return caption_1, caption_2, first.astype(np.float32)


def test_char_cnn_learns_a_preference_from_pairs():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    caption_1, caption_2, target = preference_set(rng, 512)
    net = CaptionRewardNet(TINY_CNN)
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _epoch in range(8):
        for start in range(0, len(target), 64):
            batch = slice(start, start + 64)
            target_batch = torch.from_numpy(target[batch])
            loss = bradley_terry_loss(net, caption_1[batch], caption_2[batch], target_batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    # Held out: no training caption has "crown", "bone" or "altar".
    gold, other = rewards(
        net.eval(), ["A gold crown lies on the altar.", "A bone crown lies on the altar."]
    )
    assert gold > other
