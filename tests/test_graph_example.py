"""configs/prune_mobilenet_v2_digits.py end to end: a MobileNetV2 defined in the config file is
trained on digits, pruned with the generic Fisher, and compacted both ways (the compacted
program, and the config's module at the new widths); each gives the masked network's test
accuracy, and the compacted module exported as StableHLO gives its logits."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxbud.graph as jg
from configs import prune_mobilenet_v2_digits as example
from jaxbud import augment
from jaxbud import data
from jaxbud import export
from jaxbud.graph import tune


def test_the_mobilenet_v2_example_prunes_and_compacts_exactly():
  c = example.get_config()
  # Shorter than the example's schedule (scripts/prune_mobilenet_v2_digits.py runs that).
  c.train.steps, c.prune.rounds, c.prune.prune_every, c.prune.per_round = 80, 8, 5, 4
  ds = data.digits()
  model = example.make_module(c.model.widths)
  x = augment.normalize(ds.train_images[:2], ds.mean, ds.std)
  variables = jax.jit(model.init)(jax.random.key(c.seed), x)
  variables = tune.train(model, variables, ds, steps=c.train.steps, lr=c.train.lr,
                         batch_size=c.train.batch_size, seed=c.seed)
  base = tune.accuracy(model.apply, variables, ds)
  assert base > 0.8, base

  groups, keep, masked = tune.prune_and_tune(
      model, variables, ds, rounds=c.prune.rounds, prune_every=c.prune.prune_every,
      per_round=c.prune.per_round, lr=c.prune.lr, batch_size=c.prune.batch_size)
  assert [g.name for g in groups.prunable] == [
      'stem', 'b0_expand', 'b1_expand', 'b2_expand', 'b2_project']
  assert sum(g.size - len(keep[g.name]) for g in groups.prunable) == 8 * 4

  # The compacted program, analysed at the evaluation batch size (it is shape-specialised).
  x_eval = jnp.zeros((256, 8, 8, 1))
  small = jg.compact(jg.analyze(model.apply, masked, x_eval), masked, keep,
                     factory=example.make_module)
  program = jg.compact(jg.analyze(model.apply, masked, x_eval), masked, keep)
  acc_masked = tune.accuracy(model.apply, masked, ds)
  acc_module = tune.accuracy(small.module.apply, small.variables, ds)
  acc_program = tune.accuracy(program.apply, program.variables, ds)
  print(f'base {base:.3f}, pruned masked {acc_masked:.3f}, compacted module {acc_module:.3f}, '
        f'program {acc_program:.3f}, widths {small.widths}')
  assert acc_masked == acc_module == acc_program
  assert acc_masked > 0.5
  n = lambda v: sum(np.size(a) for a in jax.tree.leaves(v['params']))
  assert n(small.variables) < 0.75 * n(variables)
  # The compacted module's logits are the masked network's.
  logits = lambda m, v: jax.jit(m.apply)(v, augment.normalize(ds.test_images[:16], ds.mean,
                                                              ds.std))
  np.testing.assert_allclose(logits(small.module, small.variables), logits(model, masked),
                             atol=1e-4, rtol=1e-4)
  # Exported (StableHLO, any batch size), it runs in plain JAX and gives the same logits.
  blob = export.serialize(
      lambda images: small.module.apply(small.variables,
                                        augment.normalize(images, ds.mean, ds.std)),
      ds.image_shape, platforms=('cpu',))
  exported = jax.export.deserialize(bytearray(blob))
  np.testing.assert_allclose(exported.call(ds.test_images[:16]),
                             logits(small.module, small.variables), atol=1e-5, rtol=1e-5)
  assert exported.call(ds.test_images[:5]).shape == (5, 10)
