r"""configs/prune_mobilenet_v2_digits.py at its full schedule: train, prune with the generic
Fisher, compact into the compacted program; prints test accuracies, widths and seconds.

  python scripts/prune_mobilenet_v2_digits.py
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

import jaxbud.graph as jg  # pylint: disable=wrong-import-position
from configs import prune_mobilenet_v2_digits as example  # pylint: disable=wrong-import-position
from jaxbud import augment  # pylint: disable=wrong-import-position
from jaxbud import data  # pylint: disable=wrong-import-position
from jaxbud.graph import tune  # pylint: disable=wrong-import-position


def main():
  start = time.perf_counter()
  c = example.get_config()
  ds = data.digits()
  model = example.make_module(c.model.widths)
  x = augment.normalize(ds.train_images[:2], ds.mean, ds.std)
  variables = jax.jit(model.init)(jax.random.key(c.seed), x)
  variables = tune.train(model, variables, ds, steps=c.train.steps, lr=c.train.lr,
                         batch_size=c.train.batch_size, seed=c.seed)
  base = tune.accuracy(model.apply, variables, ds)
  _, keep, masked = tune.prune_and_tune(
      model, variables, ds, rounds=c.prune.rounds, prune_every=c.prune.prune_every,
      per_round=c.prune.per_round, lr=c.prune.lr, batch_size=c.prune.batch_size)
  groups = jg.analyze(model.apply, masked, jnp.zeros((256, *ds.train_images.shape[1:])))
  small = jg.compact(groups, masked, keep)
  print(json.dumps({
      'base_accuracy': base,
      'masked_accuracy': tune.accuracy(model.apply, masked, ds),
      'compacted_program_accuracy': tune.accuracy(small.apply, small.variables, ds),
      'widths': {n: small.widths[n] for n in keep},
      'seconds': time.perf_counter() - start}, indent=1))


if __name__ == '__main__':
  main()
