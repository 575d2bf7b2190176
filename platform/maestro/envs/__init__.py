"""Environments: LQG, NetHack (NLE), MuJoCo/gymnasium, MinAtar, text bandits."""
