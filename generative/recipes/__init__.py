"""Recipes of the generative package; importing this module registers them (one
import per recipe module below).

* ``ncsn-toy`` — annealed vs plain Langevin on the NCSN two-Gaussian mixture.
* ``sde-2d`` — VP and VE score SDEs on swiss roll, 8 Gaussians and checkerboard.
* ``sde-digits`` — a U-Net score SDE on 8×8 digits (quick) / Fashion-MNIST (full).
"""

from generative.recipes import ncsn_toy, sde_2d, sde_digits  # noqa: F401
