"""The grid world of Zhao's *Mathematical Foundations of Reinforcement Learning*.

A ``height × width`` grid. The agent occupies one cell; states are numbered
row-major and 0-indexed, ``s = row * width + col``. Five actions, in this order:

    0 up, 1 right, 2 down, 3 left, 4 stay

Dynamics are deterministic. The reward of a move depends on where it ends:

* trying to leave the grid leaves the agent in place and gives ``r_boundary``;
* entering (or staying in) a forbidden cell is allowed and gives ``r_forbidden``;
* entering (or staying on) the target gives ``r_target`` — the target is not
  absorbing, so staying on it earns ``r_target`` at every step;
* every other move gives ``r_other``.

A world is a frozen (hashable) dataclass, so it can be a static argument of
``jax.jit``. It implements the environment protocol of :mod:`rl.envs.protocol`
with every optional capability: pure ``reset`` / ``step`` for sampling inside
``jit``, ``vmap`` and ``lax.scan`` (the observation and the state are both the
int32 state index; the world never terminates, so ``discount`` is always 1),
``reset_to`` for exploring starts, ``num_states`` / ``num_actions``, and the
tabular model ``(P, R)`` for dynamic programming.

Example:
    >>> world = book_5x5()                      # forbidden cells, target (4, 3)
    >>> P, R = world.model()                    # [25, 5, 25], [25, 5]
    >>> obs, state = world.reset(jax.random.key(0))      # uniform start state
    >>> step = world.step(jax.random.key(1), state, 4)   # stay: step.obs, step.reward

Reference: S. Zhao, *Mathematical Foundations of Reinforcement Learning*
(Springer, 2025), chapter 1 (the grid-world example used throughout the book).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_int, concrete_value, poison
from rl.envs.protocol import Step

ACTION_NAMES = ("up", "right", "down", "left", "stay")
# (row, col) displacement of each action, in the order of ACTION_NAMES.
ACTION_DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1), (0, 0))
NUM_ACTIONS = len(ACTION_NAMES)

Cell = tuple[int, int]


def _as_cell(cell, name: str) -> Cell:
    try:
        row, col = cell
    except (TypeError, ValueError):
        raise ValueError(f"{name}: a cell must be a (row, col) pair, got {cell!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (row, col)):
        raise ValueError(f"{name}: cell coordinates must be integers, got {cell!r}")
    return int(row), int(col)


@dataclasses.dataclass(frozen=True)
class GridWorld:
    """A configurable grid world (0-indexed ``(row, col)`` cells, row 0 at the top).

    Attributes:
      height: number of rows (>= 1).
      width: number of columns (>= 1).
      forbidden: the forbidden cells, ``((row, col), ...)``; they can be entered.
      target: the target cell ``(row, col)``; must not be forbidden.
      r_boundary: reward for trying to move off the grid (the agent stays put).
      r_forbidden: reward for a move that ends in a forbidden cell.
      r_target: reward for a move that ends on the target.
      r_other: reward for any other move.

    Raises:
      ValueError: a size below 1, a cell outside the grid (naming ``forbidden`` or
        ``target``), a target inside the forbidden set, or a non-finite reward.
    """

    height: int
    width: int
    forbidden: tuple[Cell, ...] = ()
    target: Cell = (0, 0)
    r_boundary: float = -1.0
    r_forbidden: float = -1.0
    r_target: float = 1.0
    r_other: float = 0.0

    def __post_init__(self):
        for name in ("height", "width"):
            check_int(getattr(self, name), name)
        target = _as_cell(self.target, "target")
        forbidden = tuple(sorted({_as_cell(c, "forbidden") for c in self.forbidden}))
        for name, cells in (("forbidden", forbidden), ("target", (target,))):
            for row, col in cells:
                if not (0 <= row < self.height and 0 <= col < self.width):
                    raise ValueError(
                        f"{name}: cell {(row, col)} is outside the {self.height}x{self.width} "
                        f"grid (0-indexed rows 0..{self.height - 1}, cols 0..{self.width - 1})")
        if target in forbidden:
            raise ValueError(f"target {target} is inside the forbidden set {forbidden}")
        for name in ("r_boundary", "r_forbidden", "r_target", "r_other"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "forbidden", forbidden)

    # ------------------------------------------------------------------ indexing

    @property
    def num_states(self) -> int:
        return self.height * self.width

    @property
    def num_actions(self) -> int:
        return NUM_ACTIONS

    @property
    def target_state(self) -> int:
        return self.state_index(*self.target)

    def state_index(self, row: int, col: int) -> int:
        """``row * width + col`` for a 0-indexed cell."""
        row, col = _as_cell((row, col), "cell")
        if not (0 <= row < self.height and 0 <= col < self.width):
            raise ValueError(f"cell {(row, col)} is outside the {self.height}x{self.width} grid")
        return row * self.width + col

    def cell(self, state: int) -> Cell:
        """The 0-indexed ``(row, col)`` of state ``state``."""
        return divmod(int(state), self.width)

    def forbidden_mask(self) -> np.ndarray:
        """``[S]`` booleans, True on forbidden cells."""
        mask = np.zeros(self.num_states, bool)
        for row, col in self.forbidden:
            mask[row * self.width + col] = True
        return mask

    # ------------------------------------------------------------------ model

    @functools.cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``(next_state [S, A] int32, reward [S, A] float64)`` as numpy constants."""
        S, A = self.num_states, NUM_ACTIONS
        forbidden = self.forbidden_mask()
        next_state = np.zeros((S, A), np.int32)
        reward = np.zeros((S, A), np.float64)
        for s in range(S):
            row, col = divmod(s, self.width)
            for a, (dr, dc) in enumerate(ACTION_DELTAS):
                r2, c2 = row + dr, col + dc
                if not (0 <= r2 < self.height and 0 <= c2 < self.width):
                    next_state[s, a] = s
                    reward[s, a] = self.r_boundary
                    continue
                s2 = r2 * self.width + c2
                next_state[s, a] = s2
                if s2 == self.target_state:
                    reward[s, a] = self.r_target
                elif forbidden[s2]:
                    reward[s, a] = self.r_forbidden
                else:
                    reward[s, a] = self.r_other
        next_state.flags.writeable = False
        reward.flags.writeable = False
        return next_state, reward

    def transition_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The deterministic dynamics as numpy arrays.

        Returns:
          ``(next_state, reward)``: ``[S, A]`` int32 next states and ``[S, A]``
          float64 rewards (read-only).
        """
        return self._tables

    def model(self) -> tuple[jax.Array, jax.Array]:
        """The tabular model of the world.

        Returns:
          ``(P, R)``: ``P[s, a, s']`` transition probabilities ``[S, A, S]`` (one-hot
          here, the world being deterministic) and ``R[s, a]`` the expected immediate
          reward ``[S, A]``, in JAX's default float dtype (float64 under x64).
        """
        next_state, reward = self._tables
        P = np.eye(self.num_states)[next_state]  # [S, A, S]
        return jnp.asarray(P), jnp.asarray(reward)

    # ------------------------------------------------------------------ sampling

    def reset(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(obs, state)`` of a start cell drawn uniformly over all ``S`` cells; both are
        the int32 scalar state index.

        Drawn as 32 random bits modulo ``S`` (bias below ``S / 2³²``), which compiles
        much faster than ``jax.random.randint``.
        """
        bits = jax.random.bits(key, (), jnp.uint32)
        s = (bits % self.num_states).astype(jnp.int32)
        return s, s

    def reset_to(self, key: jax.Array, state_index) -> tuple[jax.Array, jax.Array]:
        """``(obs, state)`` of an episode starting in ``state_index`` (key unused).

        Raises ``ValueError`` for a concrete index outside ``[0, S)``; a traced one
        gives ``−1`` (see :meth:`step`).
        """
        del key
        s, ok = _index(state_index, "state_index", self.num_states)
        return poison((s, s), ok)

    deterministic: ClassVar[bool] = True  # step() ignores its key

    def step(self, key: jax.Array, state, action) -> Step:
        """One move from ``state`` with ``action`` (int scalars), as a :class:`Step`.

        ``obs``, ``state`` and ``next_obs`` are the next state index; the world has no
        terminal states or time limit (``terminated = truncated = False``,
        ``discount = 1``). Pure and jittable. ``key`` is unused by this deterministic
        world (see ``deterministic``) but keeps the protocol's signature.

        A ``state`` outside ``[0, S)`` or an ``action`` outside ``[0, 5)`` (or a
        non-integer one) raises ``ValueError`` when concrete; when traced the step is
        poisoned (:func:`common.checks.poison`): states and observations −1, reward and
        discount NaN, never a move from some other cell.
        """
        del key
        next_state, reward = self._tables
        state, state_ok = _index(state, "state", self.num_states)
        action, action_ok = _index(action, "action", NUM_ACTIONS)
        index = state * NUM_ACTIONS + action
        s2 = jnp.asarray(next_state.ravel())[index]
        r = jnp.asarray(reward.ravel(), dtype=jnp.result_type(float))[index]
        never = jnp.zeros(jnp.shape(r), bool)
        return poison(Step(obs=s2, state=s2, reward=r, terminated=never, truncated=never,
                           next_obs=s2, discount=jnp.ones_like(r)), state_ok & action_ok)


def _index(value, name: str, size: int) -> tuple[jax.Array, jax.Array]:
    """``(value as int32, in range)``: an index in ``[0, size)``. Raises ``ValueError``
    naming ``name`` when a concrete value is out of range or not an integer; for a traced
    one the boolean says whether it is valid (its caller poisons the output)."""
    given = concrete_value(value)
    if given is not None:
        if given.dtype == bool or not np.all(np.mod(given, 1) == 0):
            raise ValueError(f"{name} must be an integer index, got {value!r}")
        if not np.all((given >= 0) & (given < size)):
            raise ValueError(f"{name} must be in [0, {size}), got {value!r}")
    value = jnp.asarray(value)
    ok = (value >= 0) & (value < size)
    if not jnp.issubdtype(value.dtype, jnp.integer):
        ok = ok & (jnp.floor(value) == value)
    return value.astype(jnp.int32), ok


def _one_indexed(cells: Sequence[Cell]) -> tuple[Cell, ...]:
    return tuple((r - 1, c - 1) for r, c in cells)


# The book's 5x5 example, in the book's 1-indexed (row, col) notation.
BOOK_5X5_FORBIDDEN_1 = ((2, 2), (2, 3), (3, 3), (4, 2), (4, 4), (5, 2))
BOOK_5X5_TARGET_1 = (4, 3)


def book_5x5(r_forbidden: float = -1.0, r_boundary: float = -1.0, r_target: float = 1.0,
             r_other: float = 0.0) -> GridWorld:
    """The book's 5×5 grid world (chapters 3–5).

    Forbidden cells at 1-indexed (row, col) (2,2), (2,3), (3,3), (4,2), (4,4), (5,2)
    and the target at (4,3), i.e. 0-indexed state 17. The book uses
    ``r_forbidden = -1`` in chapter 3 and ``-10`` to show that a harsher penalty
    makes the optimal policy avoid forbidden cells.

    Example:
        >>> world = book_5x5(r_forbidden=-10.0)
        >>> world.target_state
        17
    """
    return GridWorld(5, 5, forbidden=_one_indexed(BOOK_5X5_FORBIDDEN_1),
                     target=_one_indexed((BOOK_5X5_TARGET_1,))[0], r_boundary=r_boundary,
                     r_forbidden=r_forbidden, r_target=r_target, r_other=r_other)


def book_2x2(r_forbidden: float = -1.0, r_boundary: float = -1.0, r_target: float = 1.0,
             r_other: float = 0.0) -> GridWorld:
    """The book's 2×2 grid world of chapters 2–4.

    States ``s1 s2 / s3 s4`` (0-indexed 0..3): ``s2`` (top right) is forbidden and
    ``s4`` (bottom right) is the target.

    Example:
        >>> world = book_2x2()
        >>> world.forbidden, world.target
        (((0, 1),), (1, 1))
    """
    return GridWorld(2, 2, forbidden=((0, 1),), target=(1, 1), r_boundary=r_boundary,
                     r_forbidden=r_forbidden, r_target=r_target, r_other=r_other)


def one_hot_policy(actions, num_actions: int = NUM_ACTIONS) -> jax.Array:
    """A deterministic policy ``[S, A]`` from one action index per state ``[S]``.

    Example:
        >>> one_hot_policy([2, 2, 1, 4])       # the book's 2x2 "good" policy
    """
    actions = jnp.asarray(actions)
    if actions.ndim != 1:
        raise ValueError(f"actions must have shape [S], got {actions.shape}")
    return jax.nn.one_hot(actions, num_actions, dtype=jnp.result_type(float))


# ---------------------------------------------------------------------- figures


def plot_gridworld(world: GridWorld, values=None, policy=None, *, ax=None, title=None,
                   value_format: str = "{:.1f}", cmap: str = "YlGnBu", vmin=None, vmax=None,
                   colorbar: bool = False, min_prob: float = 0.05):
    """Draw the grid like the book's figures: values, policy arrows, special cells.

    With ``values``, cells are a heat map annotated with the value; forbidden cells
    get an orange border and the target a blue one. Without values, forbidden cells
    are filled orange and the target cyan. ``policy`` ``[S, A]`` draws the most likely
    (greedy) action of each state in black (an arrow, or a circle for "stay"; tied actions all
    drawn) and every other action at least ``min_prob`` likely less prominently, as a
    grey triangle at the cell's edge (a grey ring for "stay") whose area grows with its
    probability. :func:`gridworld_legend_handles` gives a legend for these glyphs.

    Args:
      world: the grid world.
      values: optional ``[S]`` state values.
      policy: optional ``[S, A]`` action probabilities.
      ax: matplotlib axes (a new figure when None).
      title: axes title.
      value_format: format of the numbers written in the cells.
      cmap, vmin, vmax: heat-map colour map (drawn half transparent) and limits.
      colorbar: add a colour bar next to the heat map.
      min_prob: non-greedy actions less likely than this are not drawn.

    Returns:
      The matplotlib axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    H, W, S = world.height, world.width, world.num_states
    if ax is None:
        _, ax = plt.subplots(figsize=(0.8 * W + 1.0, 0.8 * H + 0.6))
    forbidden = world.forbidden_mask()
    target = world.target_state
    if values is not None:
        values = np.asarray(values, dtype=float)
        if values.shape != (S,):
            raise ValueError(f"values must have shape [S] = ({S},), got {values.shape}")
        image = ax.imshow(values.reshape(H, W), cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.45,
                          extent=(-0.5, W - 0.5, H - 0.5, -0.5))
        if colorbar:
            ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for s in range(S):
            row, col = divmod(s, W)
            ax.text(col, row + 0.34, value_format.format(values[s]), ha="center",
                    va="center", fontsize=7, color="black")
    for s in range(S):
        row, col = divmod(s, W)
        if forbidden[s] or s == target:
            color = "tab:orange" if forbidden[s] else "tab:cyan"
            if values is None:
                ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, color=color, alpha=0.8))
            else:
                ax.add_patch(Rectangle((col - 0.45, row - 0.45), 0.9, 0.9, fill=False,
                                       edgecolor=color, linewidth=2.5))
    if policy is not None:
        policy = np.asarray(policy, dtype=float)
        if policy.shape != (S, NUM_ACTIONS):
            raise ValueError(f"policy must have shape [S, A] = ({S}, {NUM_ACTIONS}), "
                             f"got {policy.shape}")
        rows, cols = np.divmod(np.arange(S), W)
        y0 = rows - 0.08 if values is not None else rows.astype(float)
        greedy = policy >= policy.max(-1, keepdims=True) - 1e-6  # [S, A], ties all True
        other = ~greedy & (policy >= min_prob)  # [S, A] drawn less prominently
        moves = np.asarray(ACTION_DELTAS[:4], dtype=float)  # [4, 2] (drow, dcol)
        # greedy moves: black arrows, centred when alone, pointing out of the centre
        # (starting just off it) when tied
        s_idx, a_idx = np.nonzero(greedy[:, :4])
        if s_idx.size:
            alone = greedy[s_idx, :4].sum(-1) == 1
            start, length = np.where(alone, -0.18, 0.08), np.where(alone, 0.36, 0.22)
            x = cols[s_idx] + start * moves[a_idx, 1]
            y = y0[s_idx] + start * moves[a_idx, 0]
            u, v = length * moves[a_idx, 1], length * moves[a_idx, 0]
            ax.quiver(x, y, u, v, angles="xy", scale_units="xy", scale=1.0, width=0.014,
                      headwidth=3.6, headlength=3.6, headaxislength=3.2, color="black",
                      zorder=4)
        # other moves: grey triangles pointing out of the cell's edges, area ∝ probability
        s_idx, a_idx = np.nonzero(other[:, :4])
        for a, marker in enumerate("^>v<"):
            pick = a_idx == a
            if pick.any():
                ax.scatter(cols[s_idx[pick]] + 0.36 * moves[a, 1],
                           y0[s_idx[pick]] + 0.26 * moves[a, 0],
                           s=90.0 * policy[s_idx[pick], a], marker=marker, color="0.45",
                           linewidths=0, zorder=3)
        if greedy[:, 4].any():
            ax.scatter(cols[greedy[:, 4]], y0[greedy[:, 4]], s=60.0, facecolors="none",
                       edgecolors="black", linewidths=1.3, zorder=4)
        if other[:, 4].any():
            ax.scatter(cols[other[:, 4]], y0[other[:, 4]], s=80.0 + 150.0 * policy[other[:, 4], 4],
                       facecolors="none", edgecolors="0.65", linewidths=0.6, zorder=3)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_xticks(np.arange(-0.5, W, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, H, 1.0), minor=True)
    ax.grid(which="minor", color="gray", linewidth=0.6)
    ax.tick_params(which="both", length=0)
    ax.set_xticks(range(W), [str(c + 1) for c in range(W)])
    ax.set_yticks(range(H), [str(r + 1) for r in range(H)])
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def gridworld_legend_handles(*, filled: bool = False, stochastic: bool = False) -> list:
    """Legend entries for the glyphs of :func:`plot_gridworld`.

    Args:
      filled: special cells drawn filled (plots without values) instead of outlined.
      stochastic: also explain the grey glyphs of non-greedy actions.

    Returns:
      A list of labelled matplotlib artists for ``legend(handles=...)``.

    Example:
        >>> fig.legend(handles=gridworld_legend_handles(stochastic=True), ncols=5)
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def cell(color, label):
        if filled:
            return Patch(facecolor=color, alpha=0.8, label=label)
        return Patch(facecolor="none", edgecolor=color, linewidth=2.5, label=label)

    handles = [cell("tab:orange", "forbidden cell"), cell("tab:cyan", "target cell"),
               Line2D([], [], color="black", marker=r"$\rightarrow$", markersize=11,
                      linestyle="none", label="greedy (most likely) action"),
               Line2D([], [], color="black", marker="o", markerfacecolor="none",
                      markersize=7, linestyle="none", label="greedy action: stay")]
    if stochastic:
        handles.append(Line2D([], [], color="0.45", marker=">", markersize=5,
                              linestyle="none",
                              label="other action (grey, area ∝ probability)"))
    return handles
