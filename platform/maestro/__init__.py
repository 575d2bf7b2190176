"""Maestro: a distributed experiment platform for RL research with language-model feedback."""

__version__ = "0.1.0"
