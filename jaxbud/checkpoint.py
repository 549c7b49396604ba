"""Orbax checkpoints that carry their own width spec.

Each step directory holds `state` (the train state pytree), `spec` (the width spec as JSON) and
`meta` (small JSON facts such as the epoch). Because the spec travels with the state, a
checkpoint of a pruned (smaller) network is restored by reading its spec first, building the
matching abstract state, then restoring into it: nobody needs to know its shapes in advance.

Safety: Orbax writes a step into a temporary folder and renames it when complete, so a crash while
writing never leaves a step that looks finished. `meta` also stores a CRC32 of every saved array;
`restore` recomputes it, so a truncated or corrupted step is caught even when it still parses.
`restore_newest` walks back from the newest step to the newest readable one, warning about each
bad step and renaming it `<step>.unreadable` (never deleting anything) so later saves proceed.
"""
import math
import os
import zlib

from absl import logging

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxbud import spec as spec_lib
from jaxbud.errors import UsageError

CHECKSUM = '_crc32'


class CorruptCheckpointError(ValueError):
  """A checkpoint step whose arrays fail their checksum."""


class MismatchError(UsageError):
  """A readable checkpoint that belongs to another run (e.g. another spec): the user's error."""


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

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, spec: spec_lib.Spec, meta: dict | None = None):
    """Saves `step` (asynchronously; `wait` for it). Orbax skips a step at or below the newest
    saved one; that would silently keep an older state, so it is an error here."""
    flat = _flatten(state)
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat),
        spec=ocp.args.JsonSave(spec_lib.to_dict(spec)),
        meta=ocp.args.JsonSave({**(meta or {}), CHECKSUM: checksum(flat)})))
    if not saved:
      raise RuntimeError(f'checkpoint step {step} was not saved in {self.directory} (Orbax '
                         f'declined it; the newest saved step is {self.latest_step()})')

  def restore_spec(self, step: int | None = None) -> spec_lib.Spec:
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(spec=ocp.args.JsonRestore()))
    return spec_lib.from_dict(out['spec'])

  def restore(self, abstract_state, step: int | None = None):
    """(state, meta) at `step` (default latest), laid out like `abstract_state`.

    Raises CorruptCheckpointError when the arrays do not match the checksum saved with them.
    """
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_flatten(abstract_state)), meta=ocp.args.JsonRestore()))
    meta = dict(out['meta'])
    expected = meta.pop(CHECKSUM, None)
    if expected is not None and checksum(out['state']) != expected:
      raise CorruptCheckpointError(f'checkpoint step {step} in {self.directory}: arrays do not '
                                   'match their saved checksum (truncated or corrupted files)')
    return _unflatten(out['state'], abstract_state), meta

  def restore_part(self, abstract_part, step: int | None = None):
    """Only the arrays of `abstract_part`, a part of the saved state such as
    {'params', 'batch_stats'}, at `step` (default latest).

    Orbax reads nothing else (a partial restore), so neither the optimizer that wrote the
    checkpoint nor its state is needed. The checksum in `meta` covers the whole state, so it is
    not checked here.
    """
    step = self.latest_step() if step is None else step
    flat = _flatten(abstract_part)
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=flat, restore_args=ocp.checkpoint_utils.construct_restore_args(flat),
        partial_restore=True)))
    return _unflatten(out['state'], abstract_part)

  def restore_newest(self, load, quarantine: bool = True):
    """`(step, load(step))` for the newest step that `load` reads back, or None if none does.

    `load(step)` restores whatever the caller needs (spec, then state) and raises MismatchError
    for a readable checkpoint of another run, which is passed on, as is any other UsageError
    (e.g. a model.module factory that cannot be imported here). Any other failure marks the
    step unreadable: a warning names it, and with `quarantine` (only for a run's own
    checkpoints) it is renamed `<step>.unreadable` so that the run continues from the older step
    and saves past it. Nothing is ever deleted.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, load(step)
      except UsageError:  # MismatchError included: the checkpoint is fine, the call is not
        raise
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore/JSON read errors
        error = e
      older = [s for s in self.all_steps() if s < step]
      reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:300]
      logging.warning('checkpoint step %d in %s is unreadable (%s); falling back to %s', step,
                      self.directory, reason, f'step {max(older)}' if older else 'a fresh start')
      if quarantine:
        self._quarantine(step)
    return None

  def _quarantine(self, step: int):
    if jax.process_index() == 0:
      src = self.directory / str(step)
      dst = self.directory / f'{step}.unreadable'
      n = 1
      while dst.exists():
        dst, n = self.directory / f'{step}.unreadable.{n}', n + 1
      src.rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'jaxbud_quarantine_{step}')
    self.manager.reload()

  def describe_latest(self) -> str:
    """Where the newest finished checkpoint is, for error messages."""
    self.wait()
    step = self.latest_step()
    return (f'the last good checkpoint, step {step}, is kept in {self.directory}'
            if step is not None else 'no checkpoint had been saved yet')

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


def checksum(flat: dict) -> int:
  """CRC32 over the names, shapes, dtypes and bytes of a flat {path: array} dict."""
  crc = 0
  for k in sorted(flat):
    x = np.asarray(jax.device_get(flat[k]))
    crc = zlib.crc32(f'{k}{x.shape}{x.dtype}'.encode(), crc)
    crc = zlib.crc32(np.ascontiguousarray(x).tobytes(), crc)
  return crc


def _unflatten(flat: dict, abstract_tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
  return jax.tree.unflatten(treedef, [
      flat[_key(p)] if math.prod(x.shape) else jnp.zeros(x.shape, x.dtype) for p, x in leaves])


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a concrete or abstract pytree, with `sharding` or the leaves' own."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=sharding or getattr(x, 'sharding', None)), tree)
