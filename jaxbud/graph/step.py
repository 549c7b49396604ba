"""The prune-and-tune training step for any linen classifier, with generic channel statistics.

The counterpart of `prune.make_prune_step` for a model jaxbud has no spec of: the same on-device
preprocessing and SGD update in train mode, with the per-group statistics a criterion needs
(`prune.ACCUMULATORS`: fisher, grad, grad_sq, grad_abs) summed into the state from the same
backward pass, from the gates `jaxbud.graph` places where each group is consumed instead of
hand-placed ones. Masked channels are held at zero by multiplying the updated variables by
`jg.masks` (an empty mask: nothing pruned yet). `launch.bench`'s `graph_fisher` mode times it
beside the hand-gated step.
"""
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxbud import prune
from jaxbud import train as train_lib
from jaxbud.errors import UsageError
from jaxbud.graph.saliency import gate_grad_step


class GraphPruneState(flax.struct.PyTreeNode):
  """A fine-tuning state, the variables' 0/1 masks ({} for none) and the statistics'
  sums, {accumulator: {group: (C,)}}."""
  train: train_lib.TrainState
  mask: dict
  stats: dict


def check_accumulators(accumulators):
  prune.check_accumulators(accumulators)
  if 'activation' in accumulators:
    raise UsageError('the activation accumulator needs the model to record its activations '
                     '(jaxbud.models.gated); jaxbud.graph steps give the gradient ones: '
                     'fisher, grad, grad_sq, grad_abs')


def init_state(state: train_lib.TrainState, groups, mask=None,
               accumulators=('fisher',)) -> GraphPruneState:
  """Zero sums of `accumulators` for `groups` (Group objects, e.g. a `Groups`' `prunable`)."""
  check_accumulators(accumulators)
  zeros = {g.name: jnp.zeros((g.size,), jnp.float32) for g in groups}
  return GraphPruneState(state, mask or {}, {a: dict(zeros) for a in accumulators})


def make_prune_step(apply_fn, tx, ds, *, crop_pad: int, flip: bool, pad_mode: str = 'zeros',
                    dtype=jnp.float32, groups=None, accumulators=('fisher',)):
  """(GraphPruneState, batch) -> (GraphPruneState, metrics) for `apply_fn(variables, x,
  train=True, mutable=['batch_stats'])`; `groups`: the groups scored (names or a `Groups`;
  default every prunable one); `accumulators`: the statistics summed (the state's `stats`)."""
  check_accumulators(accumulators)
  preprocess = train_lib.make_preprocess(ds, crop_pad=crop_pad, flip=flip, dtype=dtype,
                                         pad_mode=pad_mode)

  def loss_fn(apply, batch):
    logits, updates = apply(batch[0], train=True, mutable=['batch_stats'])
    return train_lib.cross_entropy(logits, batch[1]).mean(), (logits, updates)

  step = gate_grad_step(apply_fn, loss_fn, groups=groups, has_aux=True)

  def prune_step(ps: GraphPruneState, batch):
    state, labels = ps.train, batch['label']
    x = preprocess(state.rng, state.step, batch['image'])
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    (loss, (logits, updates)), grads, gate_grads = step(variables, (x, labels))
    tx_updates, opt_state = tx.update(grads['params'], state.opt_state, state.params)
    variables = {'params': optax.apply_updates(state.params, tx_updates),
                 'batch_stats': updates['batch_stats']}
    if ps.mask:
      variables = jax.tree.map(jnp.multiply, variables, ps.mask)
    state = state.replace(step=state.step + 1, params=variables['params'],
                          batch_stats=variables['batch_stats'], opt_state=opt_state)
    sums = {a: {k: total + prune.ACCUMULATORS[a](gate_grads[k], None)
                for k, total in per_group.items()}
            for a, per_group in ps.stats.items()}
    metrics = {'train_loss': loss, 'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
    return ps.replace(train=state, stats=sums), metrics

  return prune_step
