"""Test programs compiled without LLVM optimisation.

XLA's CPU backend compiles several times faster at optimisation level 0; the computation is
the same. For tests that compile a network to run it once on a few images, where compiling
(or running op by op, one compilation per op) is nearly all the cost.
"""
import jax

OPTIONS = {'xla_backend_optimization_level': 0}


def run(fn, *args):
  """fn(*args) as one jitted program compiled with OPTIONS (traced now, at this call)."""
  return jax.jit(fn).lower(*args).compile(OPTIONS)(*args)
