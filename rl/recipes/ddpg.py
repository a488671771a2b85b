"""DDPG/TD3 recipes: ``ddpg-pendulum``, ``td3-pendulum``, ``ddpg-mountaincar``.

Each recipe trains one agent per seed (8 by default) in a single vmapped, jitted
program (``rl.ddpg.train_seeds``, driven by ``common.train.fit``), with the seed axis
sharded over the devices when there are several, a checkpoint between scan chunks (an
interrupted run resumes), every evaluation logged per seed to ``metrics.jsonl``, and a
learning-curve figure. The summary holds ``eval_return_mean`` (the final deterministic
evaluation, averaged over seeds), ``eval_return_per_seed``, ``env_steps`` (per seed)
and ``wall_seconds``. The throughput benchmark lives in ``rl.benchmarks``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_fields
from common.metrics import series
from common.recipe import RunContext, register_recipe
from rl.ddpg import DDPGConfig, ddpg_config, make_agent, td3_config, train_seeds

PENDULUM_TARGET = -200.0      # the bar for ddpg-pendulum at quick scale
MOUNTAINCAR_SOLVED = 90.0     # Gym's "solved" threshold for MountainCarContinuous-v0


@dataclasses.dataclass(frozen=True)
class DDPGRecipeConfig:
    """A DDPG/TD3 recipe: the agent's config and how many seeds to run.

    Attributes:
      agent: the per-seed configuration (``rl.ddpg.DDPGConfig``).
      num_seeds: independent runs, vmapped in one program.
      seed: the first seed (seeds are ``seed .. seed + num_seeds − 1``).
      periods_per_chunk: evaluation periods per jitted call; a checkpoint after each.
      shard_seeds: split the seed axis over the devices when it divides evenly.
    """

    agent: DDPGConfig = DDPGConfig()
    num_seeds: int = 8
    seed: int = 0
    periods_per_chunk: int = 5
    shard_seeds: bool = True

    def validate(self) -> None:
        check_fields(self, positive_ints=("num_seeds", "periods_per_chunk"),
                     nonnegative_ints=("seed",))


def random_policy_return(env, key: jax.Array, episodes: int = 16) -> float:
    """Mean undiscounted return of uniform random actions over ``episodes`` episodes."""
    def episode(key):
        def body(carry, k):
            state, total, alive = carry
            k_a, k_s = jax.random.split(k)
            step = env.step(k_s, state, env.random_action(k_a))
            return (step.state, total + jnp.where(alive, step.reward, 0.0),
                    alive & ~step.done), None

        _, state = env.reset(key)
        keys = jax.random.split(jax.random.fold_in(key, 1), env.max_steps)
        init = (state, jnp.zeros((), jnp.float32), jnp.ones((), bool))
        return jax.lax.scan(body, init, keys)[0][1]

    returns = jax.jit(jax.vmap(episode))(jax.random.split(key, episodes))
    return float(jnp.mean(returns))


def plot_learning_curves(rows: list[dict], seeds, title: str, *, target: float | None = None,
                         target_label: str = "target", random_return: float | None = None):
    """Per-seed and mean deterministic evaluation returns, and the critic's statistics."""
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.0))
    for s in seeds:
        steps, values = series(rows, f"eval_return/seed{s}")
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
    steps, mean = series(rows, "eval_return_mean")
    ax.plot(steps, mean, color="tab:blue", linewidth=2.5, label=f"mean of {len(seeds)} seeds")
    if target is not None:
        ax.axhline(target, color="tab:green", linestyle="--", label=f"{target_label} {target:g}")
    if random_return is not None:
        ax.axhline(random_return, color="tab:red", linestyle=":",
                   label=f"random policy {random_return:.0f}")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("deterministic evaluation return")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    steps, loss = series(rows, "critic_loss_mean")
    if steps:
        ax2.plot(steps, loss, color="tab:orange", label="critic TD loss")
        ax2.set_yscale("log")
    ax2.set_xlabel("environment steps per seed")
    ax2.set_ylabel("critic loss (mean over seeds)", color="tab:orange")
    ax3 = ax2.twinx()
    steps, q = series(rows, "q_mean_mean")
    if steps:
        ax3.plot(steps, q, color="tab:purple", label="mean Q(s, a) on replay batches")
    ax3.set_ylabel("mean Q", color="tab:purple")
    ax2.set_title("critic")
    fig.tight_layout()
    return fig


def _mesh_for(num_seeds: int, shard: bool):
    from common.sharding import make_mesh

    devices = jax.device_count()
    if not shard or devices == 1:
        return None
    usable = max(d for d in range(1, devices + 1) if num_seeds % d == 0)
    return make_mesh(data=usable) if usable > 1 else None


def run_ddpg_recipe(ctx: RunContext, cfg: DDPGRecipeConfig, title: str) -> tuple[dict, list]:
    """Train, log, plot; returns the common summary and the metrics rows."""
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    mesh = _mesh_for(cfg.num_seeds, cfg.shard_seeds)
    result = train_seeds(cfg.agent, seeds, mesh=mesh, checkpointer=ctx.checkpointer(),
                         periods_per_chunk=cfg.periods_per_chunk, logger=ctx.logger,
                         progress=ctx.progress, desc=title)
    ctx.logger.flush()
    env = make_agent(cfg.agent).env
    random_return = random_policy_return(env, jax.random.key(cfg.seed + 12345))
    rows = ctx.metrics_rows()
    per_seed = [float(v) for v in np.asarray(result.final_eval_returns)]
    total_steps = cfg.agent.total_steps
    summary = {
        "eval_return_mean": float(np.mean(per_seed)),
        "eval_return_std": float(np.std(per_seed)),
        "eval_return_per_seed": per_seed,
        "env_steps": total_steps,
        "num_seeds": cfg.num_seeds,
        "wall_seconds": result.wall_seconds,
        # measured over the steps this process ran (None when it only restored a
        # finished run); compilation included
        "env_steps_per_second": ((total_steps - result.start_step) * cfg.num_seeds
                                 / result.wall_seconds
                                 if total_steps > result.start_step else None),
        "random_policy_return": random_return,
        "devices_used": 1 if mesh is None else int(mesh.shape["data"]),
    }
    return summary, rows


_PENDULUM_QUICK = ddpg_config()
_PENDULUM_FULL_SIZES = dict(total_steps=50_000, buffer_size=50_000, actor_hidden=(256, 256),
                            critic_hidden=(256, 256), batch_size=256, eval_every=2_500)
_PENDULUM_FULL = ddpg_config(**_PENDULUM_FULL_SIZES)


@register_recipe(
    "ddpg-pendulum",
    "DDPG on gymnax Pendulum-v1, 8 vmapped seeds trained on device (target: mean eval >= -200)",
    claim=("mean evaluation return −147 (per seed −110 … −180; a random policy about −1300; "
           "target ≥ −200)"),
    quick=DDPGRecipeConfig(agent=_PENDULUM_QUICK),
    full=DDPGRecipeConfig(agent=_PENDULUM_FULL, periods_per_chunk=4),
    multi_process=True,
)
def ddpg_pendulum(ctx: RunContext, cfg: DDPGRecipeConfig) -> dict:
    summary, rows = run_ddpg_recipe(ctx, cfg, "DDPG on Pendulum-v1")
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    ctx.save_figure(plot_learning_curves(rows, seeds, "DDPG on Pendulum-v1",
                                         target=PENDULUM_TARGET,
                                         random_return=summary["random_policy_return"]),
                    "learning_curve")
    summary["target"] = PENDULUM_TARGET
    summary["target_reached"] = bool(summary["eval_return_mean"] >= PENDULUM_TARGET)
    return summary


@register_recipe(
    "td3-pendulum",
    "TD3 (twin critics, target smoothing, delayed actor) on gymnax Pendulum-v1, 8 seeds",
    claim="mean evaluation return −147",
    quick=DDPGRecipeConfig(agent=td3_config()),
    full=DDPGRecipeConfig(agent=td3_config(**_PENDULUM_FULL_SIZES), periods_per_chunk=4),
    multi_process=True,
)
def td3_pendulum(ctx: RunContext, cfg: DDPGRecipeConfig) -> dict:
    summary, rows = run_ddpg_recipe(ctx, cfg, "TD3 on Pendulum-v1")
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    ctx.save_figure(plot_learning_curves(rows, seeds, "TD3 on Pendulum-v1",
                                         target=PENDULUM_TARGET,
                                         random_return=summary["random_policy_return"]),
                    "learning_curve")
    return summary


_MOUNTAINCAR = ddpg_config(env="MountainCarContinuous-v0", total_steps=30_000,
                           buffer_size=30_000, gamma=0.99, exploration="ou",
                           exploration_std=0.5, eval_every=2_500, eval_episodes=5)


@register_recipe(
    "ddpg-mountaincar",
    "DDPG with Ornstein-Uhlenbeck exploration on gymnax MountainCarContinuous-v0, 8 seeds "
    "(sparse reward: reports how many seeds reach the goal)",
    claim="7 of 8 seeds reach the goal (return ≈ 92), one never finds it; mean 80",
    quick=DDPGRecipeConfig(agent=_MOUNTAINCAR, periods_per_chunk=4),
    full=DDPGRecipeConfig(agent=dataclasses.replace(_MOUNTAINCAR, total_steps=100_000,
                                                    buffer_size=100_000, eval_every=5_000,
                                                    eval_episodes=10), periods_per_chunk=4),
)
def ddpg_mountaincar(ctx: RunContext, cfg: DDPGRecipeConfig) -> dict:
    summary, rows = run_ddpg_recipe(ctx, cfg, "DDPG on MountainCarContinuous-v0")
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_seeds))
    ctx.save_figure(plot_learning_curves(rows, seeds, "DDPG (OU noise) on "
                                         "MountainCarContinuous-v0", target=MOUNTAINCAR_SOLVED,
                                         target_label="solved",
                                         random_return=summary["random_policy_return"]),
                    "learning_curve")
    per_seed = np.asarray(summary["eval_return_per_seed"])
    summary["solved_threshold"] = MOUNTAINCAR_SOLVED
    summary["seeds_solved"] = int(np.sum(per_seed >= MOUNTAINCAR_SOLVED))
    summary["seeds_reaching_goal"] = int(np.sum(per_seed > 50.0))   # the +100 goal bonus
    return summary
