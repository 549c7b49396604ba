r"""The generic Fisher step (`jaxbud.graph.fisher_step`) against the hand-gated prune step.

  python scripts/bench_graph_fisher.py --spec=wrn-40-2 --batch=128 --repeats=5

Three jitted steps on the same state and batch, each an SGD update in train mode that also
returns the Fisher saliency from the same backward pass:
- `hand`: `train.make_update` with per-example `models.apply_gate` gates on the spec's prunable
  layers, reduced by `prune.ACCUMULATORS['fisher']` (what `prune.make_prune_step` runs);
- `generic_hand_groups`: `jg.fisher_step` scoring the same groups, with no gate in the model;
- `generic_all_groups`: `jg.fisher_step` scoring every prunable group (the hand ones plus the
  residual streams), with their extra gates.
They are timed round robin after a warmup (`bench.time_round_robin`), so load from other
processes hits them alike; the medians and their ratios to `hand` are printed as JSON.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

import jaxbud.graph as jg  # pylint: disable=wrong-import-position
from jaxbud import bench  # pylint: disable=wrong-import-position
from jaxbud import models  # pylint: disable=wrong-import-position
from jaxbud import prune  # pylint: disable=wrong-import-position
from jaxbud import spec as spec_lib  # pylint: disable=wrong-import-position
from jaxbud import train  # pylint: disable=wrong-import-position


class _Case:

  def __init__(self, name, fn, args):
    self.name, self.args, self.times = name, args, []
    self.compiled = jax.jit(fn).lower(*args).compile()

  def call(self):
    start = time.perf_counter()
    jax.block_until_ready(self.compiled(*self.args))
    return time.perf_counter() - start


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--spec', default='wrn-40-2')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--size', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  family, depth, widen = args.spec.split('-')
  assert family == 'wrn', 'only wrn-DEPTH-WIDEN specs'
  spec = spec_lib.wrn(int(depth), float(widen))
  model = models.build(spec, 10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32)
  tx = optax.sgd(0.1, momentum=0.9)
  state = train.create_state(model, tx, jax.random.key(0), (args.size, args.size, 3))
  n = args.batch

  def hand(state, x, labels):
    gates = {k: jnp.ones((n, w)) for k, w in zip(spec.prunable_names, spec.prunable)}
    state, metrics, gate_grads = train.make_update(model, tx)(state, x, labels, gates)
    return state, metrics['train_loss'], {
        k: prune.ACCUMULATORS['fisher'](g, None) for k, g in gate_grads.items()}

  def loss_fn(apply, batch):
    logits, updates = apply(batch[0], train=True, mutable=['batch_stats'])
    return train.cross_entropy(logits, batch[1]).mean(), updates

  def generic(groups):
    step = jg.fisher_step(model.apply, loss_fn, groups=groups, has_aux=True)

    def update(state, x, labels):
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      (loss, updates), grads, fisher = step(variables, (x, labels))
      tx_updates, opt_state = tx.update(grads['params'], state.opt_state, state.params)
      state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, tx_updates),
                            batch_stats=updates['batch_stats'], opt_state=opt_state)
      return state, loss, fisher

    return update

  cases = [_Case('hand', hand, (state, x, labels)),
           _Case('generic_hand_groups', generic(spec.prunable_names), (state, x, labels)),
           _Case('generic_all_groups', generic(None), (state, x, labels))]
  # The three compute the same saliency for the hand groups.
  outs = [c.compiled(*c.args) for c in cases]
  for out in outs[1:]:
    for k in spec.prunable_names:
      np.testing.assert_allclose(out[2][k], outs[0][2][k], rtol=1e-4, atol=1e-9)
  bench.time_round_robin(cases, args.repeats, warmup=1, primed=False)
  hand_s = statistics.median(cases[0].times)
  print(json.dumps({
      'spec': args.spec, 'batch': args.batch, 'image': args.size, 'repeats': args.repeats,
      'device': jax.devices()[0].device_kind, 'cpu': cpu_name(), 'cores': os.cpu_count(),
      'jax': jax.__version__,
      'median_s': {c.name: statistics.median(c.times) for c in cases},
      'times_s': {c.name: [round(t, 4) for t in c.times] for c in cases},
      'ratio_to_hand': {c.name: statistics.median(c.times) / hand_s for c in cases[1:]},
  }, indent=1))


if __name__ == '__main__':
  main()
