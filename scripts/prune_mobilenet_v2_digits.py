r"""configs/prune_mobilenet_v2_digits.py at its full schedule: train, prune with the generic
Fisher, compact into the compacted program and into the config's module at the new widths, and
export that as StableHLO; prints test accuracies, widths and seconds.

  python scripts/prune_mobilenet_v2_digits.py [--out=/tmp/jaxbud/mobilenet_v2]

--out receives widths.json and model.stablehlo (uint8 images of any batch size in, logits out;
`jax.export.deserialize(open(path, 'rb').read()).call(images)` runs it).
"""
import argparse
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
from jaxbud import export  # pylint: disable=wrong-import-position
from jaxbud.graph import tune  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/jaxbud/mobilenet_v2')
  args = parser.parse_args()
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
  module = jg.compact(groups, masked, keep, factory=example.make_module)
  blob = export.serialize(
      lambda images: module.module.apply(module.variables,
                                         augment.normalize(images, ds.mean, ds.std)),
      ds.image_shape)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'model.stablehlo'), 'wb') as f:
    f.write(blob)
  with open(os.path.join(args.out, 'widths.json'), 'w') as f:
    json.dump(module.widths, f, indent=1)
  print(json.dumps({
      'base_accuracy': base,
      'masked_accuracy': tune.accuracy(model.apply, masked, ds),
      'compacted_program_accuracy': tune.accuracy(small.apply, small.variables, ds),
      'compacted_module_accuracy': tune.accuracy(module.module.apply, module.variables, ds),
      'exported': os.path.join(args.out, 'model.stablehlo'),
      'widths': {n: small.widths[n] for n in keep},
      'seconds': time.perf_counter() - start}, indent=1))


if __name__ == '__main__':
  main()
