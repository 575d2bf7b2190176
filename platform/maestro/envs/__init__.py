"""Environments: NetHack (NLE) tasks and captions for Motif (`nethack`) and the 1-D LQG
control problem for RANDOMIST (`lqg`)."""
