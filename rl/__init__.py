"""Reinforcement learning: stochastic approximation, tabular grid-world dynamic
programming and Monte Carlo control, DDPG/TD3, and preference optimisation."""
