"""The one place test tolerances live.

``F32`` for float32 computations compared with a float64 or differently ordered
reference; ``F64`` for float64 comparisons; ``BITWISE`` where two paths must agree
exactly (resume, sharded vs single-device reductions that keep order).
"""

import numpy as np

F32 = dict(rtol=2e-5, atol=2e-6)
F32_LOOSE = dict(rtol=1e-4, atol=1e-5)
F64 = dict(rtol=1e-10, atol=1e-12)
BITWISE = dict(rtol=0.0, atol=0.0)


def assert_close(actual, expected, tol=None, err_msg=""):
    """``np.testing.assert_allclose`` with the project's float32 tolerance by default."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=err_msg,
                               **(tol if tol is not None else F32))
