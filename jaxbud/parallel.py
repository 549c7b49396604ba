"""The one device mesh: params replicated, batches sharded over the 'data' axis.

Also the XLA options jaxbud's steps (`compiler_options`) and its initialisation (`jit_once`)
are compiled with.
"""
import functools
import os

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from jaxbud.errors import UsageError


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicate(mesh, tree):
  """`tree` (the same values in every process) as global arrays replicated over the mesh.

  For arrays made eagerly in each process (`jnp.ones(...)`): Orbax saves only global arrays
  when there are several processes, and `jax.device_put` of a process-local array onto a
  multi-process sharding fails, so the copy goes through a jitted identity instead.
  """
  return _replicator(mesh)(tree)


@functools.lru_cache(maxsize=None)
def _replicator(mesh):
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))


def host_copy(x) -> np.ndarray:
  """A numpy copy of a replicated (or single-process) array: one local shard is the whole of a
  replicated array, so this works in every process of a multi-host run."""
  if isinstance(x, jax.Array) and x.is_fully_replicated:
    x = x.addressable_data(0)
  return np.asarray(x)


def check_batch(batch_size: int, what: str = 'batch_size'):
  """Global batches split evenly over all devices, or the user hears why not."""
  n = jax.device_count()
  if batch_size % n:
    raise UsageError(f'{what}={batch_size} must be divisible by the device count {n}')


def divisible_batch(batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the device count: evaluation pads its batches
  (mask 0), so any eval batch size works on any number of devices."""
  n = jax.device_count()
  return -(-batch_size // n) * n


def put_batch(mesh, batch: dict) -> dict:
  """This process's rows of a global batch -> global arrays sharded on 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


# XLA:CPU in jaxlib 0.10 runs convolutions in YNNPACK fusions, which keep about 1.2 of 2 cores
# busy; with them off (Eigen convolutions) the WRN-40-2 train step is 1.3-1.4x faster and the
# Fisher step overhead drops to a few percent (docs/benchmarks.md). JAXBUD_CPU_YNNPACK=1 keeps
# XLA's own default.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def compiler_options() -> dict | None:
  """Per-compilation XLA options for the train, prune, eval and benchmark steps (None: XLA's).

  Only on the CPU backend, and only where this jaxlib knows the option (it is checked by
  compiling a trivial program once), so other backends and versions are unaffected.
  """
  if jax.default_backend() != 'cpu' or os.environ.get('JAXBUD_CPU_YNNPACK') == '1':
    return None
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=CPU_OPTIONS)
  except Exception:  # pylint: disable=broad-except  # an XLA without this option
    return None
  return dict(CPU_OPTIONS)


def jit(fn, **kwargs):
  """jax.jit with jaxbud's `compiler_options` (see above)."""
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)


# Programs that run once per network, parameter initialisation above all: about 20 initialisers'
# random-bit generators make them slow to compile and quick to run. LLVM at level 2 instead of
# XLA CPU's default 3 compiles them 2-3x faster (WRN-16-1: 12 s -> 4 s on a 2-core Xeon) and
# gives the same bits (tests/test_models.py checks). Not for steps: those run slower at level 2.
INIT_CPU_OPTIONS = {'xla_backend_optimization_level': 2}


def jit_once(fn, **kwargs):
  """jax.jit for a program that runs once (initialisation): on CPU, `INIT_CPU_OPTIONS`."""
  options = INIT_CPU_OPTIONS if jax.default_backend() == 'cpu' else None
  return jax.jit(fn, compiler_options=options, **kwargs)
