"""Orbax checkpoints that carry their own width spec.

Each step directory holds `state` (the train state pytree), `spec` (the width spec as JSON) and
`meta` (small JSON facts such as the epoch). Because the spec travels with the state, a
checkpoint of a pruned (smaller) network is restored by reading its spec first, building the
matching abstract state, then restoring into it: nobody needs to know its shapes in advance.
"""
import os

from etils import epath
import jax
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
        state=ocp.args.StandardSave(state),
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
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], out['meta']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a concrete or abstract pytree, with `sharding` or the leaves' own."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=sharding or getattr(x, 'sharding', None)), tree)
