"""Shared infrastructure for jaxatlas: optimizers, training loop, sharding,
checkpoints, logging, network blocks, registries, benchmarks and the CLI.

``common`` imports nothing from ``rl``, ``generative`` or ``vision``.
"""
