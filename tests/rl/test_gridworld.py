"""The grid world against an independent reading of the book's rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.envs import (
    Environment,
    FiniteEnvironment,
    StartFromState,
    Step,
    TabularModel,
    check_environment,
)
from rl.envs.gridworld import (
    ACTION_NAMES,
    GridWorld,
    book_2x2,
    book_5x5,
    one_hot_policy,
    plot_gridworld,
)

MOVES = {"up": (-1, 0), "right": (0, 1), "down": (1, 0), "left": (0, -1), "stay": (0, 0)}


def reference_model(height, width, forbidden, target, rb, rf, rt, ro):
    """``P [S, A, S]``, ``R [S, A]`` written from the book's description, cell by cell."""
    S = height * width
    P = np.zeros((S, 5, S))
    R = np.zeros((S, 5))
    for row in range(height):
        for col in range(width):
            s = row * width + col
            for a, name in enumerate(("up", "right", "down", "left", "stay")):
                dr, dc = MOVES[name]
                r2, c2 = row + dr, col + dc
                if r2 < 0 or r2 >= height or c2 < 0 or c2 >= width:
                    P[s, a, s] = 1.0
                    R[s, a] = rb
                elif (r2, c2) == target:
                    P[s, a, r2 * width + c2] = 1.0
                    R[s, a] = rt
                elif (r2, c2) in forbidden:
                    P[s, a, r2 * width + c2] = 1.0
                    R[s, a] = rf
                else:
                    P[s, a, r2 * width + c2] = 1.0
                    R[s, a] = ro
    return P, R


def test_action_order_is_the_books():
    assert ACTION_NAMES == ("up", "right", "down", "left", "stay")


def test_book_5x5_layout():
    world = book_5x5()
    # 1-indexed (2,2),(2,3),(3,3),(4,2),(4,4),(5,2) and target (4,3)
    assert set(world.forbidden) == {(1, 1), (1, 2), (2, 2), (3, 1), (3, 3), (4, 1)}
    assert world.target == (3, 2)
    assert world.target_state == 3 * 5 + 2 == 17
    assert world.num_states == 25 and world.num_actions == 5
    assert world.state_index(3, 2) == 17 and world.cell(17) == (3, 2)
    assert np.flatnonzero(world.forbidden_mask()).tolist() == [6, 7, 12, 16, 18, 21]


def test_book_2x2_layout():
    world = book_2x2()
    assert world.forbidden == ((0, 1),) and world.target == (1, 1)
    P, R = world.model()
    # s1 right -> forbidden s2: -1; s2 down -> target: +1; s4 stay: +1; s1 up: boundary -1
    assert R[0, 1] == -1.0 and R[1, 2] == 1.0 and R[3, 4] == 1.0 and R[0, 0] == -1.0
    assert P[0, 1, 1] == 1.0 and P[1, 2, 3] == 1.0


@pytest.mark.parametrize("world", [
    book_5x5(r_forbidden=-10.0),
    book_2x2(r_forbidden=-3.0, r_boundary=-2.0, r_target=5.0, r_other=0.5),
    GridWorld(3, 4, forbidden=((0, 3), (2, 0)), target=(1, 2), r_boundary=-0.5,
              r_forbidden=-7.0, r_target=2.0, r_other=-0.1),
    GridWorld(1, 1, target=(0, 0)),
])
def test_model_matches_reference(world, x64):
    P, R = world.model()
    P_ref, R_ref = reference_model(world.height, world.width, set(world.forbidden),
                                   world.target, world.r_boundary, world.r_forbidden,
                                   world.r_target, world.r_other)
    assert P.shape == (world.num_states, 5, world.num_states) and P.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(P), P_ref)
    np.testing.assert_array_equal(np.asarray(R), R_ref)


def test_rewards_of_named_moves():
    world = book_5x5(r_forbidden=-10.0)
    _, R = world.model()
    assert R[0, 0] == -1.0  # up at the top-left corner: boundary
    assert R[0, 3] == -1.0  # left at the top-left corner: boundary
    assert R[0, 1] == 0.0  # right into a plain cell
    assert R[1, 2] == -10.0  # down into the forbidden (2,2) (1-indexed)
    assert R[12, 2] == 1.0  # forbidden (3,3) down onto the target
    assert R[17, 4] == 1.0  # the target is not absorbing: staying earns r_target
    assert R[16, 4] == -10.0  # staying in a forbidden cell
    assert R[17, 2] == 0.0  # leaving the target down to a plain cell


def test_step_matches_model_jitted_and_vmapped():
    world = book_5x5()
    P, R = world.model()
    states = jnp.repeat(jnp.arange(25), 5)
    actions = jnp.tile(jnp.arange(5), 25)
    step = jax.jit(jax.vmap(world.step, in_axes=(None, 0, 0)))
    out = step(jax.random.key(0), states, actions)
    np.testing.assert_array_equal(np.asarray(out.obs), np.asarray(P.argmax(-1)).ravel())
    np.testing.assert_array_equal(np.asarray(out.state), np.asarray(out.obs))
    np.testing.assert_array_equal(np.asarray(out.next_obs), np.asarray(out.obs))
    np.testing.assert_array_equal(np.asarray(out.reward), np.asarray(R).ravel())
    # a continuing task: never terminated or truncated, always bootstraps
    assert not np.asarray(out.done).any() and np.all(np.asarray(out.discount) == 1.0)
    one = world.step(jax.random.key(1), 17, 4)  # un-jitted scalar call
    assert isinstance(one, Step) and one.reward.shape == () and one.terminated.dtype == bool
    assert int(one.obs) == 17 and float(one.reward) == 1.0


def test_reset_is_uniform_over_states():
    world = book_5x5()
    starts, states = jax.vmap(world.reset)(jax.random.split(jax.random.key(0), 25_000))
    np.testing.assert_array_equal(np.asarray(starts), np.asarray(states))
    assert starts.dtype == jnp.int32
    counts = np.bincount(np.asarray(starts), minlength=25)
    assert counts.size == 25 and counts.min() > 0
    # each count ~ Binomial(25000, 1/25): mean 1000, sd ~ 31
    assert np.abs(counts - 1000).max() < 160


def test_world_is_a_static_jit_argument():
    world = book_5x5()
    assert world == book_5x5() and hash(world) == hash(book_5x5())
    assert world != book_5x5(r_forbidden=-10.0)
    f = jax.jit(lambda w, s: w.step(None, s, 1).obs, static_argnums=0)
    assert int(f(world, 0)) == 1


def test_gridworld_implements_the_protocol():
    world = book_2x2()
    for protocol in (Environment, FiniteEnvironment, StartFromState, TabularModel):
        assert isinstance(world, protocol), protocol.__name__
    check_environment(world, "env", finite=True, start_from_state=True, tabular=True,
                      hashable=True)
    obs, state = jax.jit(world.reset_to)(jax.random.key(0), 3)
    assert int(obs) == int(state) == 3 and obs.dtype == jnp.int32
    # an episode driven only through the protocol: s1 down, s3 right, then stay on s4
    _, state = world.reset_to(None, 0)
    rewards = []
    for action in (2, 1, 4):
        step = world.step(jax.random.key(1), state, action)
        state = step.state
        rewards.append(float(step.reward))
    assert int(state) == 3 and rewards == [0.0, 1.0, 1.0]


def test_check_environment_names_what_is_missing():
    class ResetOnly:
        def reset(self, key):
            return 0, 0

    with pytest.raises(ValueError, match=r"env must implement the environment protocol.*"
                                         r"ResetOnly is missing: step"):
        check_environment(ResetOnly(), "env")
    with pytest.raises(ValueError, match=r"world .* str is missing: reset, step"):
        check_environment("grid", "world")
    with pytest.raises(ValueError, match=r"missing: step, num_states \(an integer >= 1\), "
                                         r"num_actions .*reset_to.*model\(\)"):
        check_environment(ResetOnly(), "env", finite=True, start_from_state=True,
                          tabular=True)

    class Unhashable(GridWorld):
        __hash__ = None

    with pytest.raises(ValueError, match="env must be hashable"):
        check_environment(Unhashable(2, 2), "env", hashable=True)


def test_one_hot_policy():
    pi = one_hot_policy([2, 2, 1, 4])
    assert pi.shape == (4, 5)
    np.testing.assert_array_equal(np.asarray(pi.argmax(-1)), [2, 2, 1, 4])
    with pytest.raises(ValueError, match="actions"):
        one_hot_policy([[0, 1]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(forbidden=((5, 0),)), "forbidden"),
    (dict(forbidden=((0, -1),)), "forbidden"),
    (dict(target=(2, 5)), "target"),
    (dict(target=(1, 1), forbidden=((1, 1),)), "target"),
    (dict(forbidden=((0,),)), "forbidden"),
    (dict(target=(0.5, 1)), "target"),
    (dict(r_target=float("nan")), "r_target"),
])
def test_bad_cells_and_rewards(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GridWorld(5, 5, **kwargs)


@pytest.mark.parametrize("height, width, match", [(0, 3, "height"), (3, -1, "width")])
def test_bad_sizes(height, width, match):
    with pytest.raises(ValueError, match=match):
        GridWorld(height, width)


def test_plot_gridworld():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world = book_5x5()
    values = np.linspace(-1, 10, 25)
    policy = np.full((25, 5), 0.2)
    ax = plot_gridworld(world, values, policy, title="t")
    assert ax.get_title() == "t"
    assert len(ax.texts) == 25  # one value per cell
    plt.close(ax.figure)
    ax = plot_gridworld(world, policy=one_hot_policy(np.zeros(25, int)))
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="values"):
        plot_gridworld(world, values[:-1])
    with pytest.raises(ValueError, match="policy"):
        plot_gridworld(world, values, policy[:, :4])


@pytest.mark.parametrize("state, action, match", [
    (25, 0, r"state must be in \[0, 25\)"),    # used to alias another cell
    (-1, 0, r"state must be in \[0, 25\)"),
    (3, 5, r"action must be in \[0, 5\)"),
    (3, -2, r"action must be in \[0, 5\)"),
    (2.5, 0, "state must be an integer index"),
])
def test_step_refuses_out_of_range_states_and_actions(state, action, match):
    with pytest.raises(ValueError, match=match):
        book_5x5().step(jax.random.key(0), state, action)


def test_step_and_reset_to_poison_out_of_range_indices_under_jit():
    world = book_5x5()
    step = jax.jit(jax.vmap(lambda s, a: world.step(jax.random.key(0), s, a)))
    out = step(jnp.array([3, 25, 3, -1]), jnp.array([1, 0, 5, 4]))
    assert np.asarray(out.state).tolist() == [4, -1, -1, -1]
    assert np.asarray(out.obs).tolist() == np.asarray(out.next_obs).tolist() == [4, -1, -1, -1]
    assert np.isfinite(float(out.reward[0])) and np.all(np.isnan(np.asarray(out.reward[1:])))
    assert np.all(np.isnan(np.asarray(out.discount[1:])))
    obs, state = jax.jit(lambda s: world.reset_to(jax.random.key(0), s))(30)
    assert int(obs) == int(state) == -1
    with pytest.raises(ValueError, match=r"state_index must be in \[0, 25\)"):
        world.reset_to(jax.random.key(0), 25)
