"""Orbax checkpoints that carry their own width spec.

Each step directory holds `state` (the train state pytree), `spec` (the width spec as JSON) and
`meta` (small JSON facts such as the epoch). Because the spec travels with the state, a
checkpoint of a pruned (smaller) network is restored by reading its spec first, building the
matching abstract state, then restoring into it: nobody needs to know its shapes in advance.
"""
import math
import os

from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxbud import spec as spec_lib


class Checkpoints:
  """A CheckpointManager over `directory` keeping the latest `keep` steps."""

  def __init__(self, directory, keep: int = 3):
    self.directory = epath.Path(os.path.abspath(directory))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=True),
        item_names=('state', 'spec', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, spec: spec_lib.Spec, meta: dict | None = None):
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_flatten(state)),
        spec=ocp.args.JsonSave(spec_lib.to_dict(spec)),
        meta=ocp.args.JsonSave(meta or {})))

  def restore_spec(self, step: int | None = None) -> spec_lib.Spec:
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(spec=ocp.args.JsonRestore()))
    return spec_lib.from_dict(out['spec'])

  def restore(self, abstract_state, step: int | None = None):
    """(state, meta) at `step` (default latest), laid out like `abstract_state`."""
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_flatten(abstract_state)), meta=ocp.args.JsonRestore()))
    return _unflatten(out['state'], abstract_state), out['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _key(path) -> str:
  parts = (getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))) for k in path)
  return '.'.join(str(p).replace('/', '|') for p in parts)


def _flatten(tree) -> dict:
  """{path: leaf} without zero-size leaves (layers pruned to nothing), which Orbax refuses."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_key(p): x for p, x in leaves if math.prod(x.shape)}


def _unflatten(flat: dict, abstract_tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
  return jax.tree.unflatten(treedef, [
      flat[_key(p)] if math.prod(x.shape) else jnp.zeros(x.shape, x.dtype) for p, x in leaves])


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a concrete or abstract pytree, with `sharding` or the leaves' own."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=sharding or getattr(x, 'sharding', None)), tree)
