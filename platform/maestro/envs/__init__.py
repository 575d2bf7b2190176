"""Environments: NetHack (NLE) tasks and captions for Motif (`nethack`), the 1-D LQG
control problem for RANDOMIST (`lqg`), Mountain Car and continuous CartPole with linear
policies for MCMC-RANDOMIST (`continuous_control`), and Pendulum and the MuJoCo v5 tasks
with their rewards as differentiable functions for the torch learners (`control_tasks`)."""
