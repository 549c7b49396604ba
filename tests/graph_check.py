"""Shared checks of jaxbud.graph tests: random variables, random keep sets, and the exactness
check (the compacted network computes what the masked one does, in eval and train mode)."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxbud.graph as jg
from tests import fast_compile


def noisy_variables(model, x, seed=0, **kwargs):
  """Variables of `model` for input `x` with every leaf drawn at random (BN scales and
  variances around 1, the rest around 0), so that a slicing error changes the outputs."""
  abstract = jax.eval_shape(lambda k: model.init(k, x, **kwargs), jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def draw(path, v):
    positive = jax.tree_util.keystr(path).endswith(("'scale']", "'var']"))
    fan_in = int(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 1  # activations stay O(1)
    noise = rng.uniform(-1, 1, v.shape) * np.sqrt(3 / max(fan_in, 1))
    return jnp.asarray((np.float32(positive) + 0.5 * noise).astype(v.dtype))

  return jax.tree_util.tree_map_with_path(draw, abstract)


def random_keep(groups, seed, allow_empty=False):
  """{name: sorted random subset} for every prunable group: at least one channel removed
  from each group of more than one, at least one kept unless allow_empty."""
  rng = np.random.default_rng(seed)
  keep = {}
  for g in groups.prunable:
    n = int(rng.integers(0 if allow_empty else 1, max(g.size, 2)))
    keep[g.name] = np.sort(rng.choice(g.size, n, replace=False))
  return keep


def check_compaction(model, variables, x, factory, seeds=(0, 1), train=True, atol=1e-5):
  """For random keep sets: logits (eval and train mode) and updated batch statistics of the
  compacted network (factory(widths)) equal those of the masked network. Returns the groups."""
  groups = jg.analyze(model.apply, variables, x)
  assert groups.prunable, str(groups)
  has_stats = 'batch_stats' in variables
  for seed in seeds:
    keep = random_keep(groups, seed)
    masked = jax.tree.map(jnp.multiply, variables, jg.masks(groups, keep))
    small = jg.compact(groups, variables, keep, factory=factory)

    def run(m, v):
      out = [m.apply(v, x)]
      if train:
        if has_stats:
          out += list(m.apply(v, x, train=True, mutable=['batch_stats']))
        else:
          out += [m.apply(v, x, train=True), {}]
      return out

    got = fast_compile.run(lambda v: run(small.module, v), small.variables)
    want = fast_compile.run(lambda v: run(model, v), masked)
    np.testing.assert_allclose(got[0], want[0], atol=atol, rtol=1e-5)
    if train:
      np.testing.assert_allclose(got[1], want[1], atol=atol, rtol=1e-5)
      if has_stats:
        updated = {**masked, 'batch_stats': want[2]['batch_stats']}
        want_stats = jg.compact(groups, updated, keep).variables['batch_stats']
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5),
                     got[2]['batch_stats'], want_stats)
  return groups
