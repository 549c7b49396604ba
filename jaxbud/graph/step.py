"""The prune-and-tune training step for any linen classifier, with the generic Fisher saliency.

The counterpart of `prune.make_prune_step` for a model jaxbud has no spec of: the same on-device
preprocessing and SGD update in train mode, with `fisher_step`'s per-group Fisher saliency
summed into the state from the same backward pass instead of hand-placed gates. Masked
channels are held at zero by multiplying the updated variables by `jg.masks` (an empty mask:
nothing pruned yet). `launch.bench`'s `graph_fisher` mode times it beside the hand-gated step.
"""
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxbud import train as train_lib
from jaxbud.graph.saliency import fisher_step


class GraphPruneState(flax.struct.PyTreeNode):
  """A fine-tuning state, the variables' 0/1 masks ({} for none) and {group: (C,)} Fisher sums."""
  train: train_lib.TrainState
  mask: dict
  fisher: dict


def init_state(state: train_lib.TrainState, groups, mask=None) -> GraphPruneState:
  """Zero Fisher sums for `groups` (Group objects, e.g. a `Groups`' `prunable`)."""
  return GraphPruneState(state, mask or {},
                         {g.name: jnp.zeros((g.size,), jnp.float32) for g in groups})


def make_prune_step(apply_fn, tx, ds, *, crop_pad: int, flip: bool, pad_mode: str = 'zeros',
                    dtype=jnp.float32, groups=None):
  """(GraphPruneState, batch) -> (GraphPruneState, metrics) for `apply_fn(variables, x,
  train=True, mutable=['batch_stats'])`; `groups`: the groups scored (names or a `Groups`;
  default every prunable one)."""
  preprocess = train_lib.make_preprocess(ds, crop_pad=crop_pad, flip=flip, dtype=dtype,
                                         pad_mode=pad_mode)

  def loss_fn(apply, batch):
    logits, updates = apply(batch[0], train=True, mutable=['batch_stats'])
    return train_lib.cross_entropy(logits, batch[1]).mean(), (logits, updates)

  step = fisher_step(apply_fn, loss_fn, groups=groups, has_aux=True)

  def prune_step(ps: GraphPruneState, batch):
    state, labels = ps.train, batch['label']
    x = preprocess(state.rng, state.step, batch['image'])
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    (loss, (logits, updates)), grads, fisher = step(variables, (x, labels))
    tx_updates, opt_state = tx.update(grads['params'], state.opt_state, state.params)
    variables = {'params': optax.apply_updates(state.params, tx_updates),
                 'batch_stats': updates['batch_stats']}
    if ps.mask:
      variables = jax.tree.map(jnp.multiply, variables, ps.mask)
    state = state.replace(step=state.step + 1, params=variables['params'],
                          batch_stats=variables['batch_stats'], opt_state=opt_state)
    sums = {k: total + fisher[k] for k, total in ps.fisher.items()}
    metrics = {'train_loss': loss, 'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
    return ps.replace(train=state, fisher=sums), metrics

  return prune_step
