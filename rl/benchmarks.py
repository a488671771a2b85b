"""Benchmarks of the rl package; importing this module registers them.

Each benchmark times jitted code after warm-up against a reference path measured in
the same run (a plain numpy/Python loop of the same algorithm, or a slower variant),
and reports the ratio; none asserts a time.

* ``gridworld-episodes``: episodes/s of the jitted, vmapped episode generator of
  :mod:`rl.monte_carlo` vs :func:`numpy_sample_episodes_vectorised` (all episodes
  advance together) and :func:`numpy_sample_episodes` (a loop per step).
* ``mc-epsilon-greedy``: wall time of :func:`rl.monte_carlo.mc_epsilon_greedy` vs
  :func:`numpy_mc_epsilon_greedy_vectorised` and :func:`numpy_mc_epsilon_greedy`, the
  same algorithm in batch-vectorised numpy and as numpy loops.
* ``dpo-train-step``: DPO train-step tokens/s with cached vs recomputed reference
  log-probs.
* ``ddpg-throughput``: on-device DDPG env steps/s vs a Python loop.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.bench import BenchContext, benchmark, time_interleaved
from common.optim import OptimConfig, build_optimizer
from common.train import TrainState, make_train_step
from rl import monte_carlo
from rl.ddpg import ddpg_config, make_agent, seed_keys
from rl.envs.gridworld import GridWorld, book_5x5
from rl.preference.model import CausalLM, LMConfig, lm_flops_per_token
from rl.preference.task import (
    SentimentTask,
    completion_positions,
    demonstrations,
    sample_prompts,
)
from rl.preference.training import make_dpo_loss, make_logits_fn, reference_logps

# ----------------------------------------------------------------------------- grid world


def numpy_sample_episodes(world: GridWorld, policy, num_episodes: int, length: int,
                          rng: np.random.Generator, exploring_starts: bool = False):
    """Plain numpy/Python-loop episode generator (the reference path of
    ``gridworld-episodes``), one step at a time from the world's transition table.

    Returns:
      ``(states, actions, rewards)`` numpy arrays ``[B, T]``.
    """
    next_state, reward = world.transition_table()
    policy = np.asarray(policy, dtype=np.float64)
    cdf = np.cumsum(policy, axis=-1)
    S, A = policy.shape
    states = np.zeros((num_episodes, length), np.int64)
    actions = np.zeros((num_episodes, length), np.int64)
    rewards = np.zeros((num_episodes, length))
    for b in range(num_episodes):
        uniforms = rng.random(length)
        if exploring_starts:
            pair = rng.integers(S * A)
            s, first = pair // A, pair % A
        else:
            s, first = rng.integers(S), -1
        for t in range(length):
            a = first if t == 0 and first >= 0 else \
                min(int(np.searchsorted(cdf[s], uniforms[t] * cdf[s, -1], side="right")), A - 1)
            states[b, t], actions[b, t] = s, a
            rewards[b, t] = reward[s, a]
            s = next_state[s, a]
    return states, actions, rewards


def numpy_sample_episodes_vectorised(world: GridWorld, policy, num_episodes: int,
                                     length: int, rng: np.random.Generator,
                                     exploring_starts: bool = False):
    """Batch-vectorised numpy episode generator: all episodes advance together, one
    numpy operation per time step (the fair CPU reference of ``gridworld-episodes``).

    It draws the random numbers in the order :func:`numpy_sample_episodes` does (per
    episode: ``length`` uniforms, then the start), so with the same ``rng`` state both
    return the same episodes.

    Returns:
      ``(states, actions, rewards)`` numpy arrays ``[B, T]``.
    """
    next_state, reward = world.transition_table()
    policy = np.asarray(policy, dtype=np.float64)
    cdf = np.cumsum(policy, axis=-1)
    S, A = policy.shape
    uniforms = np.empty((num_episodes, length))
    starts = np.empty(num_episodes, np.int64)
    firsts = np.full(num_episodes, -1, np.int64)
    for b in range(num_episodes):  # the loop reference's draw order; cheap next to the steps
        uniforms[b] = rng.random(length)
        if exploring_starts:
            pair = rng.integers(S * A)
            starts[b], firsts[b] = pair // A, pair % A
        else:
            starts[b] = rng.integers(S)
    states = np.zeros((num_episodes, length), np.int64)
    actions = np.zeros((num_episodes, length), np.int64)
    rewards = np.zeros((num_episodes, length))
    s = starts
    for t in range(length):
        rows = cdf[s]  # [B, A]
        # searchsorted(row, u·row[-1], side="right") = how many entries are <= u·row[-1]
        a = np.minimum(np.sum(rows <= uniforms[:, t:t + 1] * rows[:, -1:], axis=1), A - 1)
        if t == 0:
            a = np.where(firsts >= 0, firsts, a)
        states[:, t], actions[:, t], rewards[:, t] = s, a, reward[s, a]
        s = next_state[s, a]
    return states, actions, rewards


def numpy_mc_epsilon_greedy_vectorised(world: GridWorld, rng: np.random.Generator, *,
                                       epsilon: float, gamma: float, num_episodes: int,
                                       episode_length: int, episodes_per_update: int = 1,
                                       exploring_starts: bool = False):
    """:func:`numpy_mc_epsilon_greedy` with every loop over episodes and states replaced
    by batch operations (returns accumulated backwards over the batch at once,
    ``np.add.at`` for the sums, the policy update over all visited states together).
    Same random draws and same summation order, hence the same result.

    Returns:
      ``(policy [S, A], q [S, A])``.
    """
    S, A = world.num_states, world.num_actions
    policy = np.full((S, A), 1.0 / A)
    sums = np.zeros((S, A))
    counts = np.zeros((S, A))
    for _ in range(num_episodes // episodes_per_update):
        states, actions, rewards = numpy_sample_episodes_vectorised(
            world, policy, episodes_per_update, episode_length, rng, exploring_starts)
        returns = np.zeros_like(rewards)
        g = np.zeros(episodes_per_update)
        for t in range(episode_length - 1, -1, -1):
            g = rewards[:, t] + gamma * g
            returns[:, t] = g
        order = (slice(None), slice(None, None, -1))  # per episode, last step first
        np.add.at(sums, (states[order].ravel(), actions[order].ravel()), returns[order].ravel())
        np.add.at(counts, (states.ravel(), actions.ravel()), 1)
        visited = np.unique(states)
        q = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        best = q[visited].max(axis=1, keepdims=True)
        greedy = np.argmax(q[visited] >= best - 1e-5 * np.maximum(1.0, np.abs(best)), axis=1)
        policy[visited] = epsilon / A
        policy[visited, greedy] += 1.0 - epsilon
    q = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return policy, q


def numpy_mc_epsilon_greedy(world: GridWorld, rng: np.random.Generator, *, epsilon: float,
                            gamma: float, num_episodes: int, episode_length: int,
                            episodes_per_update: int = 1, exploring_starts: bool = False):
    """Plain numpy/Python-loop MC ε-greedy (the reference path of ``mc-epsilon-greedy``):
    the algorithm of :func:`rl.monte_carlo.mc_epsilon_greedy` (running average, no
    tail), written with loops over episodes and steps.

    Returns:
      ``(policy [S, A], q [S, A])``.
    """
    S, A = world.num_states, world.num_actions
    policy = np.full((S, A), 1.0 / A)
    sums = np.zeros((S, A))
    counts = np.zeros((S, A))
    for _ in range(num_episodes // episodes_per_update):
        states, actions, rewards = numpy_sample_episodes(
            world, policy, episodes_per_update, episode_length, rng, exploring_starts)
        visited = np.zeros(S, bool)
        for b in range(episodes_per_update):
            g = 0.0
            for t in range(episode_length - 1, -1, -1):
                g = rewards[b, t] + gamma * g
                s, a = states[b, t], actions[b, t]
                sums[s, a] += g
                counts[s, a] += 1
                visited[s] = True
        q = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        for s in np.flatnonzero(visited):
            best = q[s].max()
            greedy = int(np.argmax(q[s] >= best - 1e-5 * max(1.0, abs(best))))
            policy[s] = epsilon / A
            policy[s, greedy] += 1.0 - epsilon
    q = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return policy, q


@benchmark("gridworld-episodes", "grid-world episodes/s: jitted vmapped generator vs "
           "batch-vectorised numpy and a numpy loop")
def bench_episode_generator(ctx: BenchContext, sizes: dict | None = None) -> dict:
    """Episodes per second of the jitted, vmapped generator against batch-vectorised
    numpy (the fair CPU reference: one numpy operation per step for all episodes) and
    the per-step Python loop, timed in alternation."""
    sizes = sizes or ({"jax_episodes": 4096, "numpy_episodes": 100, "length": 100}
                      if ctx.quick else
                      {"jax_episodes": 65536, "numpy_episodes": 500, "length": 100})
    world = book_5x5()
    policy = jnp.full((world.num_states, world.num_actions), 1.0 / world.num_actions)
    policy_np = np.asarray(policy)
    B, T = sizes["jax_episodes"], sizes["length"]
    n_np = sizes["numpy_episodes"]
    generate = jax.jit(lambda key: monte_carlo.sample_episodes(world, policy, key, B, T))
    rng = np.random.default_rng(0)
    times = time_interleaved({
        "jax": lambda: generate(jax.random.key(0)),
        "vectorised": lambda: numpy_sample_episodes_vectorised(world, policy_np, B, T, rng),
        "loop": lambda: numpy_sample_episodes(world, policy_np, n_np, T, rng),
    }, rounds=5 if ctx.quick else 7, warmup=1)
    jax_rate = times["jax"].per_second(B)
    vec_rate = times["vectorised"].per_second(B)
    loop_rate = times["loop"].per_second(n_np)
    return {
        "episode_length": T,
        "jax_episodes_per_call": B,
        "jax_episodes_per_second": jax_rate,
        "jax_steps_per_second": jax_rate * T,
        "vectorised_numpy_episodes_per_second": vec_rate,
        "loop_numpy_episodes_per_second": loop_rate,
        "speedup_vs_vectorised_numpy": jax_rate / vec_rate,
        "speedup_vs_numpy_loop": jax_rate / loop_rate,
    }


@benchmark("mc-epsilon-greedy", "MC ε-greedy wall time for a fixed number of episodes: JAX vs "
           "batch-vectorised numpy and a numpy loop")
def bench_mc_epsilon_greedy(ctx: BenchContext, sizes: dict | None = None) -> dict:
    """Wall time of MC ε-greedy for a fixed number of episodes: JAX against the same
    algorithm in batch-vectorised numpy and as numpy loops, timed in alternation."""
    sizes = sizes or ({"episodes": 2000, "length": 100, "batch": 100} if ctx.quick else
                      {"episodes": 10000, "length": 100, "batch": 100})
    world = book_5x5(r_forbidden=-10.0)
    N, T, B = sizes["episodes"], sizes["length"], sizes["batch"]
    kwargs = dict(epsilon=0.1, gamma=0.9, num_episodes=N, episode_length=T,
                  episodes_per_update=B)
    run = jax.jit(lambda key: monte_carlo.mc_epsilon_greedy(world, key, **kwargs))
    rng = np.random.default_rng(0)
    times = time_interleaved({
        "jax": lambda: run(jax.random.key(0)),
        "vectorised": lambda: numpy_mc_epsilon_greedy_vectorised(world, rng, **kwargs),
        "loop": lambda: numpy_mc_epsilon_greedy(world, rng, **kwargs),
    }, rounds=3 if ctx.quick else 5, warmup=1)
    return {
        "episodes": N,
        "episode_length": T,
        "episodes_per_update": B,
        "jax_seconds": times["jax"].median,
        "vectorised_numpy_seconds": times["vectorised"].median,
        "loop_numpy_seconds": times["loop"].median,
        "jax_episodes_per_second": times["jax"].per_second(N),
        "speedup_vs_vectorised_numpy": times["vectorised"].median / times["jax"].median,
        "speedup_vs_numpy_loop": times["loop"].median / times["jax"].median,
    }


# ----------------------------------------------------------------------------- DPO


@benchmark("dpo-train-step", "DPO train-step tokens/s and fraction of the matmul ceiling, with "
           "reference log-probs cached vs recomputed every step")
def bench_dpo_step(ctx: BenchContext) -> dict:
    """DPO train-step throughput with cached vs per-step reference log-probs."""
    task = SentimentTask()
    if ctx.quick:
        cfg, batch = LMConfig(vocab_size=task.tokenizer().vocab_size), 32
    else:
        cfg, batch = LMConfig(vocab_size=task.tokenizer().vocab_size, d_model=256,
                              num_layers=4, num_heads=8, mlp_dim=512), 128
    key = jax.random.key(0)
    lm = CausalLM(cfg, rngs=nnx.Rngs(0))
    tx = build_optimizer(OptimConfig(name="adam", learning_rate=1e-4))
    state = TrainState.create(lm, tx, key)
    logits_fn = make_logits_fn(state.graphdef, state.rest)
    prompts = sample_prompts(task, jax.random.key(1), batch)
    mask = completion_positions(task, batch)
    length = jnp.full((batch,), task.seq_len, jnp.int32)
    pairs = {"chosen": demonstrations(task, jax.random.key(2), prompts),
             "rejected": demonstrations(task, jax.random.key(3), prompts),
             "chosen_mask": mask, "rejected_mask": mask, "chosen_length": length,
             "rejected_length": length}
    cached = reference_logps(logits_fn, state.params, pairs)
    step_cached = make_train_step(make_dpo_loss(logits_fn), tx, donate=False)
    step_fresh = make_train_step(make_dpo_loss(logits_fn, ref_params=state.params), tx,
                                 donate=False)
    repeats = 15 if ctx.quick else 8
    times = time_interleaved({"cached": lambda: step_cached(state, cached),
                              "fresh": lambda: step_fresh(state, pairs)},
                             rounds=repeats, warmup=2)
    t_cached, t_fresh = times["cached"], times["fresh"]
    tokens = 2 * batch * task.seq_len
    # forward + backward ≈ 3 forwards of the policy; the per-step reference adds one more
    flops = 3.0 * tokens * lm_flops_per_token(cfg, task.seq_len)
    gflops = flops / t_cached.median / 1e9
    return {
        "batch_pairs": batch,
        "seq_len": task.seq_len,
        "d_model": cfg.d_model,
        "num_layers": cfg.num_layers,
        "cached_ref_step_ms": 1e3 * t_cached.median,
        "per_step_ref_step_ms": 1e3 * t_fresh.median,
        "tokens_per_second_cached_ref": t_cached.per_second(tokens),
        "tokens_per_second_per_step_ref": t_fresh.per_second(tokens),
        "speedup_cached_vs_per_step_ref": t_fresh.median / t_cached.median,
        "speedup_cached_vs_per_step_ref_best_of": t_fresh.minimum / t_cached.minimum,
        "gflops_cached_ref": gflops,
        "fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(gflops),
    }


# ----------------------------------------------------------------------------- DDPG


def python_loop_steps(fns: dict, agent, state, first_step: int, num_steps: int, seed: int = 0):
    """The reference path of ``ddpg-throughput``: the same agent driven from a Python loop.

    Per environment step: one jitted exploration action, one jitted environment step,
    the transition copied to a host-side numpy ring buffer, a batch drawn there with
    numpy and one jitted update. ``fns`` holds the jitted ``act``, ``env`` and
    ``update`` (built once by the caller); ``state`` is one seed's ``DDPGState``
    whose buffer seeds the numpy buffer. Returns the learner after ``num_steps`` steps.
    """
    cfg = agent.config
    storage = {k: np.array(v) for k, v in jax.device_get(state.buffer.storage).items()}
    position, size = int(state.buffer.position), int(state.buffer.size)
    capacity = state.buffer.capacity
    rng = np.random.default_rng(seed)
    episode_length = int(state.episode_length)
    for t in range(first_step, first_step + num_steps):
        k_act, k_env, k_update = jax.random.split(jax.random.fold_in(state.key, t), 3)
        action, noise = fns["act"](state, k_act, t)
        step = fns["env"](k_env, state.env_state, action)
        transition = jax.device_get({"obs": state.obs, "action": action, "reward": step.reward,
                                     "next_obs": step.next_obs, "discount": step.discount})
        for k, v in transition.items():
            storage[k][position] = v
        position, size = (position + 1) % capacity, min(size + 1, capacity)
        idx = rng.integers(0, size, cfg.batch_size)
        batch = {k: v[idx] for k, v in storage.items()}
        learner, _ = fns["update"](state.learner, batch, k_update, t - cfg.learning_starts)
        episode_length = 0 if bool(step.done) else episode_length + 1
        state = state.replace(learner=learner, env_state=step.state, obs=step.obs, noise=noise,
                              episode_length=np.int32(episode_length))
    return state.learner


def _ddpg_update_flops(cfg, obs_dim: int, action_dim: int) -> float:
    """Approximate matmul flops of one update (2 flops per multiply-add, backward = 2×)."""
    def macs(sizes):
        return sum(a * b for a, b in itertools.pairwise(sizes))

    actor = macs([obs_dim, *cfg.actor_hidden, action_dim])
    critic = macs([obs_dim + action_dim, *cfg.critic_hidden, 1])
    c = cfg.num_critics
    per_sample = (actor + c * critic          # target actor and target critics (forward)
                  + 3 * c * critic            # critic step (forward + backward)
                  + 3 * (actor + critic) / cfg.policy_delay)  # actor step through Q_1
    return 2.0 * cfg.batch_size * per_sample


@benchmark("ddpg-throughput", "DDPG env steps/s (updates included) on device for 1 and 8 "
           "vmapped seeds and rollout only, vs a Python loop")
def bench_ddpg_throughput(ctx: BenchContext) -> dict:
    """Env steps/s of on-device DDPG (1 and 8 seeds), rollout only, and a Python loop."""
    steps = 500 if ctx.quick else 5_000
    py_steps = 150 if ctx.quick else 1_000
    cfg = ddpg_config(learning_starts=500, buffer_size=20_000)
    agent = make_agent(cfg)
    run = jax.jit(jax.vmap(agent.run_steps, in_axes=(0, None, None, None)),
                  static_argnums=(2, 3))
    init = jax.jit(jax.vmap(agent.init))
    out = {"env": cfg.env, "steps_per_call": steps, "batch_size": cfg.batch_size,
           "hidden": list(cfg.critic_hidden)}
    t0 = jnp.int32(cfg.learning_starts)
    state8 = init(seed_keys(range(8)))
    state8, _ = run(state8, jnp.int32(0), cfg.learning_starts, False)   # fill the buffers
    warm = {8: state8, 1: jax.tree.map(lambda x: x[:1], state8)}
    one = jax.tree.map(lambda x: x[0], state8)
    fns = {"act": jax.jit(agent.explore), "env": jax.jit(agent.env.step),
           "update": jax.jit(agent.update)}
    # every path in alternation, so load drift falls on all of them alike
    times = time_interleaved({
        "rollout_8": lambda: run(state8, t0, steps, False)[0].buffer,
        "train_1": lambda: run(warm[1], t0, steps, True)[0].learner,
        "train_8": lambda: run(warm[8], t0, steps, True)[0].learner,
        "python_loop": lambda: python_loop_steps(fns, agent, one, cfg.learning_starts,
                                                 py_steps),
    }, rounds=3 if ctx.quick else 5, warmup=1)
    out["rollout_steps_per_second_8_seeds"] = times["rollout_8"].per_second(steps * 8)
    for seeds in (1, 8):
        out[f"train_steps_per_second_{seeds}_seeds"] = times[f"train_{seeds}"].per_second(
            steps * seeds)
    loop = times["python_loop"]
    py_sps = loop.per_second(py_steps)
    out["python_loop_steps_per_second"] = py_sps
    out["speedup_1_seed_vs_python_loop"] = out["train_steps_per_second_1_seeds"] / py_sps
    out["speedup_8_seeds_vs_python_loop"] = out["train_steps_per_second_8_seeds"] / py_sps
    flops = _ddpg_update_flops(cfg, agent.env.obs_dim, agent.env.action_dim)
    gflops = flops * out["train_steps_per_second_8_seeds"] / 1e9
    out["update_gflops_8_seeds"] = gflops
    out["fraction_of_matmul_ceiling"] = ctx.fraction_of_ceiling(gflops)
    return out
