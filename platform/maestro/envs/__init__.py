"""Environments: NetHack (NLE) tasks and captions for Motif (`nethack`), the 1-D LQG
control problem for RANDOMIST (`lqg`), and Mountain Car and continuous CartPole with linear
policies for MCMC-RANDOMIST (`continuous_control`)."""
