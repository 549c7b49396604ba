"""Prune-and-tune of any linen classifier with the generic Fisher, on an in-memory dataset.

A small loop for models jaxbud does not know (the example configs/prune_mobilenet_v2_digits.py):
SGD in train mode on the masked network, the Fisher saliency of every prunable group summed
from the same backward pass (`fisher_step`), and every `prune_every` steps the `per_round`
globally least salient live channels masked (`select`; masks, so nothing recompiles). Its
result is compacted with `compact`. `launch.prune` does not run it yet.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbud import augment
from jaxbud.graph.analyze import analyze
from jaxbud.graph.compact import masks
from jaxbud.graph.compact import select
from jaxbud.graph.saliency import fisher_step


def _loss_fn(apply, batch):
  logits, updates = apply(batch['image'], train=True, mutable=['batch_stats'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
  return loss, updates


def _batches(ds, batch_size, seed):
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(ds.train_labels))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      yield {'image': augment.normalize(ds.train_images[idx], ds.mean, ds.std),
             'label': jnp.asarray(ds.train_labels[idx])}


def make_step(model, tx, scored: bool):
  """(variables, opt_state, mask, batch) -> (variables, opt_state, loss, fisher): one SGD step
  on the masked network; fisher is {} unless `scored`."""
  step = fisher_step(model.apply, _loss_fn, has_aux=True)

  def update(variables, opt_state, mask, batch):
    if scored:
      (loss, updates), grads, fisher = step(variables, batch)
    else:
      (loss, updates), grads = jax.value_and_grad(
          lambda v: _loss_fn(lambda *a, **k: model.apply(v, *a, **k), batch), has_aux=True)(
              variables)
      fisher = {}
    tx_updates, opt_state = tx.update(grads['params'], opt_state, variables['params'])
    params = optax.apply_updates(variables['params'], tx_updates)
    variables = jax.tree.map(jnp.multiply, {**variables, 'params': params,
                                            'batch_stats': updates['batch_stats']}, mask)
    return variables, opt_state, loss, fisher

  return jax.jit(update)


def train(model, variables, ds, *, steps, lr, batch_size=64, seed=0, mask=None):
  """Plain SGD (momentum 0.9) for `steps` steps; returns the variables."""
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(variables['params'])
  mask = mask if mask is not None else jax.tree.map(jnp.ones_like, variables)
  update = make_step(model, tx, scored=False)
  batches = _batches(ds, batch_size, seed)
  for _ in range(steps):
    variables, opt_state, _, _ = update(variables, opt_state, mask, next(batches))
  return variables


def prune_and_tune(model, variables, ds, *, rounds, prune_every, per_round, lr,
                   batch_size=64, seed=1):
  """Removes `per_round` channels every `prune_every` steps, `rounds` times, by the Fisher
  saliency summed since the last removal. Returns (groups, keep, masked variables)."""
  x = augment.normalize(ds.train_images[:batch_size], ds.mean, ds.std)
  groups = analyze(model.apply, variables, x)
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(variables['params'])
  keep = {g.name: np.arange(g.size) for g in groups.prunable}
  mask = masks(groups, keep)
  update = make_step(model, tx, scored=True)
  batches = _batches(ds, batch_size, seed)
  removed = 0
  for _ in range(rounds):
    total = None
    for _ in range(prune_every):
      variables, opt_state, _, fisher = update(variables, opt_state, mask, next(batches))
      total = fisher if total is None else jax.tree.map(jnp.add, total, fisher)
    # Channels already removed score -inf, so they are chosen again before any live one.
    scores = {}
    for name, s in total.items():
      s = np.array(s, np.float64)
      s[~np.isin(np.arange(s.size), keep[name])] = -np.inf
      scores[name] = s
    removed += per_round
    keep = select(groups, scores, removed)
    mask = masks(groups, keep)
    variables = jax.tree.map(jnp.multiply, variables, mask)
  return groups, keep, variables


def accuracy(apply, variables, ds, batch_size=256) -> float:
  """Test accuracy of apply(variables, images) (eval mode), in batches of exactly `batch_size`
  (the last one padded), since a compacted program runs at the batch size it was analysed at."""
  run = jax.jit(lambda v, x: jnp.argmax(apply(v, x), -1))
  correct, n = 0, len(ds.test_labels)
  for i in range(0, n, batch_size):
    images = ds.test_images[i:i + batch_size]
    pad = batch_size - len(images)
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    pred = np.asarray(run(variables, augment.normalize(images, ds.mean, ds.std)))
    correct += int(np.sum(pred[:batch_size - pad] == ds.test_labels[i:i + batch_size]))
  return correct / n
