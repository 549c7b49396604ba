"""The prune-and-tune training step for any linen classifier, with generic channel statistics.

The counterpart of `prune.make_prune_step` for a model jaxbud has no spec of: the same on-device
preprocessing and SGD update in train mode, with the per-group statistics a criterion needs
(`prune.ACCUMULATORS`: fisher, grad, grad_sq, grad_abs) summed into the state from the same
backward pass, from the gates `jaxbud.graph` places where each group is consumed instead of
hand-placed ones. Masked channels are held at zero by multiplying the updated variables by
`expand_masks` of the state's per-group masks (an empty mask: nothing pruned yet).
`launch.bench`'s `graph_fisher` mode times it beside the hand-gated step. `launch.prune` runs
`model.module` networks (jaxbud.graph.arch) with it and the evaluation and compaction below.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbud import prune
from jaxbud import train as train_lib
from jaxbud.errors import UsageError
from jaxbud.graph import arch
from jaxbud.graph.compact import compact
from jaxbud.graph.saliency import gate_grad_step


def check_accumulators(accumulators):
  prune.check_accumulators(accumulators)
  if 'activation' in accumulators:
    raise UsageError('the activation accumulator needs the model to record its activations '
                     '(jaxbud.models.gated); jaxbud.graph steps give the gradient ones: '
                     'fisher, grad, grad_sq, grad_abs')


def init_state(state: train_lib.TrainState, groups, mask=None,
               accumulators=('fisher',)) -> prune.PruneState:
  """A `prune.PruneState` for `groups` (Group objects, e.g. a `Groups`' `prunable`): zero sums
  of `accumulators`, and `mask` ({group name: (C,) 0/1}, default {}: nothing masked)."""
  check_accumulators(accumulators)
  zeros = {g.name: jnp.zeros((g.size,), jnp.float32) for g in groups}
  return prune.PruneState(state, mask or {}, {a: dict(zeros) for a in accumulators})


def expand_masks(groups, mask: dict):
  """The variables' 0/1 masks (traceable) from per-group channel masks {group name: (C,)}: a
  variable position is 0 where any of its axes holds a masked channel (`jg.masks` from arrays
  in place of kept indices). Leaves no masked group touches get the scalar 1."""
  by_leaf = {}
  for name, m in mask.items():
    for e in groups[name].entries:
      by_leaf.setdefault(e.path, []).append((e.axis, e.index, m))
  out = []
  for path, shape in zip(groups.paths, groups.shapes):
    total = jnp.ones((), jnp.float32)
    for axis, index, m in by_leaf.get(path, ()):
      v = jnp.where(index >= 0, jnp.asarray(m, jnp.float32)[np.maximum(index, 0)], 1.0)
      total = total * v.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    out.append(total)
  return jax.tree_util.tree_unflatten(groups.treedef, out)


def make_prune_step(apply_fn, tx, ds, *, crop_pad: int, flip: bool, pad_mode: str = 'zeros',
                    dtype=jnp.float32, groups=None, scored=None, accumulators=('fisher',)):
  """(PruneState, batch) -> (PruneState, metrics) for `apply_fn(variables, x, train=True,
  mutable=['batch_stats'])`. `groups`: the model's `Groups` (needed when the state masks
  channels: the updated variables are multiplied by `expand_masks`); `scored`: the groups whose
  statistics are summed (names; default every prunable one); `accumulators`: the statistics
  summed (the state's `stats`)."""
  check_accumulators(accumulators)
  preprocess = train_lib.make_preprocess(ds, crop_pad=crop_pad, flip=flip, dtype=dtype,
                                         pad_mode=pad_mode)

  def loss_fn(apply, batch):
    logits, updates = apply(batch[0], train=True, mutable=['batch_stats'])
    return train_lib.cross_entropy(logits, batch[1]).mean(), (logits, updates)

  step = gate_grad_step(apply_fn, loss_fn, groups=scored if scored is not None else groups,
                        has_aux=True)

  def prune_step(ps: prune.PruneState, batch):
    state, labels = ps.train, batch['label']
    x = preprocess(state.rng, state.step, batch['image'])
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    masks = None
    if ps.mask:
      if not hasattr(groups, 'paths'):
        raise ValueError('a state with masks needs make_prune_step(groups=<the model\'s Groups>)')
      # Channels masked since the last step are zeroed before it runs, as well as after the
      # update (momentum and weight decay would move them again).
      masks = expand_masks(groups, ps.mask)
      variables = jax.tree.map(jnp.multiply, variables, masks)
    (loss, (logits, updates)), grads, gate_grads = step(variables, (x, labels))
    tx_updates, opt_state = tx.update(grads['params'], state.opt_state, variables['params'])
    variables = {'params': optax.apply_updates(variables['params'], tx_updates),
                 'batch_stats': updates['batch_stats']}
    if masks is not None:
      variables = jax.tree.map(jnp.multiply, variables, masks)
    state = state.replace(step=state.step + 1, params=variables['params'],
                          batch_stats=variables['batch_stats'], opt_state=opt_state)
    sums = {a: {k: total + prune.ACCUMULATORS[a](gate_grads[k], None)
                for k, total in per_group.items()}
            for a, per_group in ps.stats.items()}
    metrics = {'train_loss': loss, 'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
    return ps.replace(train=state, stats=sums), metrics

  return prune_step


# --- the prune run's operations for a model.module network (prune_tune picks them by family) ---

def make_model_prune_step(model, tx, ds, *, crop_pad: int, flip: bool, pad_mode: str = 'zeros',
                          accumulators=('fisher',)):
  """`make_prune_step` for a `jaxbud.graph.arch.Model`, with `prune.make_prune_step`'s
  signature: masks and statistics keyed by the spec's prunable groups."""
  return make_prune_step(model.apply, tx, ds, crop_pad=crop_pad, flip=flip, pad_mode=pad_mode,
                         dtype=model.dtype, groups=model.groups,
                         scored=list(model.spec.prunable_names), accumulators=accumulators)


def make_eval_step(model, ds):
  """`train.make_eval_step` on a PruneState of a `jaxbud.graph.arch.Model`: the variables are
  multiplied by the expanded masks, which computes what the compacted network does."""
  eval_step = train_lib.make_eval_step(model, ds)

  def masked_eval_step(ps: prune.PruneState, batch):
    masks = expand_masks(model.groups, ps.mask)
    state = ps.train.replace(params=jax.tree.map(jnp.multiply, ps.train.params, masks['params']),
                             batch_stats=jax.tree.map(jnp.multiply, ps.train.batch_stats,
                                                      masks['batch_stats']))
    return eval_step(state, batch)

  return masked_eval_step


def shrink_state(state: train_lib.TrainState, spec, keep: dict) -> train_lib.TrainState:
  """`prune.shrink_state` for a module spec: params, batch statistics and the optimizer state
  laid out like the params keep only the channels `keep` ({group: indices}) names."""
  small = compact(arch.spec_groups(spec), {'params': state.params, 'batch_stats': state.batch_stats}, keep,
                  opt_state=state.opt_state)
  return state.replace(params=small.variables['params'],
                       batch_stats=small.variables['batch_stats'], opt_state=small.opt_state)
