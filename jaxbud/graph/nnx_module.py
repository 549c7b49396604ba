"""flax.nnx modules as (apply_fn, variables), the form the rest of jaxbud.graph works on.

`nnx.split(module, nnx.Param, nnx.BatchStat, ...)` gives the module's graph and its states; the
Param and BatchStat states, as plain dicts, become `variables` = {'params': ..., 'batch_stats':
...}, so their leaves are jaxpr inputs with linen-like paths (('params', 'conv1', 'kernel')) and
groups get the same names as in linen. `apply_fn(variables, *args)` merges them back into a
copy of the module, calls it, and returns (outputs, {'batch_stats': the statistics after the
call}), so a module in train mode (`module.train()`) has its statistic updates unified with the
statistics, as linen's `mutable=['batch_stats']` does. Other state (RNG keys and counts) is
closed over as it is at the split.
"""
import jax

try:
  from flax import nnx
except ImportError:  # pragma: no cover
  nnx = None


def is_nnx(obj) -> bool:
  return nnx is not None and isinstance(obj, nnx.Module)


def functional(module):
  """(apply_fn, variables) of an nnx module; see the module doc."""
  graphdef, params, stats, rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
  variables = {'params': nnx.to_pure_dict(params), 'batch_stats': nnx.to_pure_dict(stats)}

  def apply_fn(variables, *args, **kwargs):
    p = jax.tree.map(lambda v: v, params)
    s = jax.tree.map(lambda v: v, stats)
    nnx.replace_by_pure_dict(p, variables['params'])
    nnx.replace_by_pure_dict(s, variables['batch_stats'])
    copy = nnx.merge(graphdef, p, s, rest)
    out = copy(*args, **kwargs)
    return out, {'batch_stats': nnx.to_pure_dict(nnx.state(copy, nnx.BatchStat))}

  return apply_fn, variables


def update(module, variables):
  """Writes `variables` (sliced: new shapes) into `module` in place with `nnx.update`."""
  _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
  nnx.replace_by_pure_dict(params, variables['params'])
  nnx.replace_by_pure_dict(stats, variables['batch_stats'])
  nnx.update(module, params, stats)
  return module
