"""The one device mesh: params replicated, batches sharded over the 'data' axis."""
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np


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
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def check_batch(batch_size: int, what: str = 'batch_size'):
  """Global batches split evenly over all devices, or the user hears why not."""
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f'{what}={batch_size} must be divisible by the device count {n}')


def put_batch(mesh, batch: dict) -> dict:
  """This process's rows of a global batch -> global arrays sharded on 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
