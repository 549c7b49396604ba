"""Selecting, masking and removing channels of the groups `analyze` found.

- `select(groups, scores, n)`: the n globally least salient channels of prunable groups go,
  as `prune.select` does for jaxbud's own networks.
- `masks(groups, keep)`: 0/1 arrays laid out like the variables, 0 at every position of every
  leaf that holds a channel not kept. Multiplying the variables by them gives the masked
  network; it computes what the compacted one does (docs/any_model.md says why).
- `compact(groups, variables, keep, ...)`: the variables (and optimizer state laid out like the
  params) with those positions removed, and what runs the smaller network: the module from a
  user factory, the nnx module updated in place, or else the compacted program (`program`).
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud.errors import UsageError
from jaxbud.graph import nnx_module
from jaxbud.graph.analysis import key_path
from jaxbud.graph.program import Program


def _frozen_error(g) -> UsageError:
  return UsageError(f'group {g.name!r} is frozen ({g.frozen_by[0]}) and cannot be pruned; '
                    'leave it out (print the groups to see which are prunable)')


def check_keep(groups, keep: dict) -> dict:
  """{name: sorted unique int64 kept channels}, validated against the groups."""
  out = {}
  for name, idx in keep.items():
    if name not in groups:
      raise UsageError(f'keep names {name!r}, which is no group; groups are '
                       f'{list(groups.names)[:8]}')
    g = groups[name]
    idx = np.unique(np.asarray(idx, np.int64).reshape(-1))
    if len(idx) and (idx[0] < 0 or idx[-1] >= g.size):
      raise UsageError(f'keep[{name!r}] holds channel indices outside [0, {g.size})')
    if not g.prunable and len(idx) < g.size:
      raise _frozen_error(g)
    out[name] = idx
  return out


def axis_masks(groups, keep) -> dict:
  """{(leaf path, axis): bool array over that axis, False where a removed channel sits}."""
  keep = check_keep(groups, keep)
  out = {}
  for g in groups:
    if g.name not in keep:
      continue
    for e in g.entries:
      removed = (e.index >= 0) & ~np.isin(e.index, keep[g.name])
      m = out.setdefault((e.path, e.axis), np.ones(len(e.index), bool))
      m &= ~removed
  return out


def masks(groups, keep: dict):
  """0/1 float32 arrays laid out like the analysed variables: 0 at every position of a channel
  not in `keep` ({group name: kept channel indices}; groups left out keep all)."""
  kept = axis_masks(groups, keep)
  leaves = []
  for path, shape in zip(groups.paths, groups.shapes):
    m = np.ones(shape, np.float32)
    for axis in range(len(shape)):
      if (path, axis) in kept:
        b = kept[(path, axis)].reshape([-1 if i == axis else 1 for i in range(len(shape))])
        m = m * b
    leaves.append(jnp.asarray(m))
  return jax.tree_util.tree_unflatten(groups.treedef, leaves)


def _take(leaf, slices):
  arr = np.asarray(jax.device_get(leaf))
  for axis, idx in slices:
    arr = np.take(arr, idx, axis=axis)
  return jnp.asarray(arr)


class Compacted(NamedTuple):
  variables: Any
  opt_state: Any
  module: Any      # factory(widths); the nnx module, updated; else None
  widths: dict     # {group name: channels left}
  # Runs the smaller network: (variables, *args, **kwargs) -> outputs. module.apply with a
  # factory; without one (linen), the compacted program of the analysed call (jg.program).
  apply: Any = None


def compact(groups, variables, keep: dict, opt_state=None, factory=None) -> Compacted:
  """Removes the channels not in `keep` from the variables and from `opt_state` (any optax
  state whose sub-trees are laid out like the params: a leaf is sliced when its path ends with
  a params path and it has that param's shape). With `factory(widths) -> module`, also builds
  the smaller module, `widths` being {group name: channels left} for every group.

  Given a flax.nnx module (analysed as `analyze(module, x)`) instead of variables, slices its
  Param and BatchStat arrays and writes them back with `nnx.update`: the module itself is then
  the smaller network (`module`); its attributes such as `out_features` keep their old values,
  so read widths from `widths` or the arrays."""
  nnx_target = None
  if nnx_module.is_nnx(variables):
    nnx_target, variables = variables, nnx_module.functional(variables)[1]
  plan = {}
  for (path, axis), m in axis_masks(groups, keep).items():
    if not m.all():
      plan.setdefault(path, []).append((axis, np.flatnonzero(m)))
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  paths = [key_path(p) for p, _ in leaves]
  if paths != list(groups.paths):
    raise UsageError('variables are not laid out like the ones analysed; pass the variables '
                     'given to analyze (same collections and modules)')
  small = jax.tree_util.tree_unflatten(
      groups.treedef, [_take(v, plan[p]) if p in plan else v for p, (_, v) in zip(paths, leaves)])

  if opt_state is not None:
    shapes = dict(zip(groups.paths, groups.shapes))
    params = {p[1:]: (shapes[p], s) for p, s in plan.items() if p[0] == 'params'}

    def slice_like_params(path, leaf):
      keys = key_path(path)
      if keys and keys[-1] == 'value' and nnx_target is not None:
        keys = keys[:-1]  # an nnx Variable's array
      for k in range(len(keys)):
        hit = params.get(keys[k:])
        if hit and tuple(np.shape(leaf)) == hit[0]:
          return _take(leaf, hit[1])
      return leaf

    opt_state = jax.tree_util.tree_map_with_path(slice_like_params, opt_state)
  keep = check_keep(groups, keep)
  widths = {g.name: len(keep[g.name]) if g.name in keep else g.size for g in groups}
  if nnx_target is not None:
    module = nnx_module.update(nnx_target, small)
    return Compacted(small, opt_state, module, widths, nnx_module.functional(module)[0])
  if factory is not None:
    module = factory(widths)
    return Compacted(small, opt_state, module, widths, getattr(module, 'apply', None))
  apply = Program(*groups.source, keep) if groups.source is not None else None
  return Compacted(small, opt_state, None, widths, apply)


def select(groups, scores: dict, n: int) -> dict:
  """Removes the n channels with the globally smallest scores ({group name: (size,) scores},
  prunable groups only; ties go to the earlier group, then the lower channel). Returns
  {name: sorted int32 kept channels} for every group scored."""
  if not groups.prunable:
    raise UsageError('no channel group of this model can be pruned: every group is frozen '
                     '(print the groups from analyze to see what froze each)')
  order = {g.name: i for i, g in enumerate(groups)}
  rows = []
  for name, s in scores.items():
    if name not in groups:
      raise UsageError(f'scores name {name!r}, which is no group; prunable groups are '
                       f'{[g.name for g in groups.prunable][:8]}')
    g = groups[name]
    if not g.prunable:
      raise _frozen_error(g)
    s = np.asarray(s, np.float64).reshape(-1)
    if s.shape != (g.size,):
      raise UsageError(f'scores[{name!r}] has shape {s.shape}, expected ({g.size},)')
    rows += [(s[c], order[name], c, name) for c in range(g.size)]
  if not 0 <= n <= len(rows):
    raise UsageError(f'cannot prune {n} channels: the scored groups hold {len(rows)}')
  rows.sort(key=lambda r: r[:3])
  removed = {(name, c) for _, _, c, name in rows[:n]}
  return {name: np.array([c for c in range(groups[name].size) if (name, c) not in removed],
                         np.int32) for name in scores}
