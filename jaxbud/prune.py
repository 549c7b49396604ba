"""Structured pruning as plain functions: scores -> smaller spec -> sliced parameters.

- `select(spec, scores, n)` picks the n globally least salient live channels and returns the
  smaller spec with, per prunable layer, the indices of the channels kept.
- `shrink(tree, spec, keep)` slices every tensor coupled to those channels in any pytree laid out
  like the params (params, batch stats, optimizer slots such as momentum): the producing conv's
  output axis, its BN entries, the consuming conv's input axis. Layers left with no channel lose
  those modules entirely, as a model built from the smaller spec has none.
- `make_prune_step` is the training step of a prune-and-tune run: the ordinary SGD update on the
  masked network, with per-channel statistics (`ACCUMULATORS`: the Fisher saliency, gate
  gradients, activations) accumulated from the gradient with respect to per-example channel
  gates, in the same backward pass.

Because a channel's gate sits after its BN and ReLU, a masked channel contributes exactly zero,
so the compacted network computes what the masked one does.
"""
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import models
from jaxbud import parallel
from jaxbud import spec as spec_lib
from jaxbud import train as train_lib


def coupled_modules(spec: spec_lib.Spec, name: str):
  """(producer conv, its BN, consumer conv) module paths of prunable layer `name`."""
  block, conv = name.split('/')
  k = int(conv[len('conv'):])
  return (block, conv), models.channel_bn(spec, name), (block, f'conv{k + 1}')


def rank(spec: spec_lib.Spec, scores: dict, alive: dict | None = None):
  """Live channels as (name, channel, score), least salient first.

  scores: {name: (C,)} over the spec's current channels; alive: optional {name: (C,) bool}
  marking channels not yet removed (default all). Ties go to the earlier layer, then the lower
  channel index, so the order is deterministic. A family with a `min_width` (a module spec
  keeps one channel per group) leaves each layer's `min_width` most salient live channels out.
  """
  rows, keep = [], getattr(spec, 'min_width', 0)
  for li, (name, w) in enumerate(zip(spec.prunable_names, spec.prunable)):
    s = np.asarray(scores[name], np.float64).reshape(-1)
    if s.shape != (w,):
      raise ValueError(f'scores[{name!r}] has shape {s.shape}, expected ({w},)')
    live = np.ones(w, bool) if alive is None else np.asarray(alive[name], bool)
    layer = sorted((s[c], li, int(c), name) for c in np.flatnonzero(live))
    rows += layer[:max(0, len(layer) - keep)]
  rows.sort(key=lambda r: r[:3])
  return [(name, c, float(s)) for s, _, c, name in rows]


def select(spec: spec_lib.Spec, scores: dict, n: int, alive: dict | None = None):
  """Removes the n live channels with the globally smallest scores (see `rank`).

  Returns (smaller spec, {name: sorted int32 indices of the channels kept}).
  """
  ranked = rank(spec, scores, alive)
  if not 0 <= n <= len(ranked):
    raise ValueError(f'cannot prune {n} channels: {len(ranked)} live prunable channels are left')
  removed = {(name, c) for name, c, _ in ranked[:n]}
  keep = {}
  for name, w in zip(spec.prunable_names, spec.prunable):
    live = np.ones(w, bool) if alive is None else np.asarray(alive[name], bool)
    keep[name] = np.array([c for c in range(w) if live[c] and (name, c) not in removed],
                          np.int32)
  return spec.with_prunable(len(keep[n_]) for n_ in spec.prunable_names), keep


def slicing_plan(spec: spec_lib.Spec, keep: dict) -> dict:
  """{module path: [(kernel axis, indices), ...]} for every tensor coupled to a prunable layer.

  A module may appear twice: a bottleneck's middle conv consumes one prunable layer (input axis)
  and produces the next (output axis).
  """
  plan = {}
  for name in spec.prunable_names:
    idx = np.asarray(keep[name], np.int32)
    producer, bn, consumer = coupled_modules(spec, name)
    for module, axis in ((producer, -1), (bn, 0), (consumer, 2)):
      plan.setdefault(module, []).append((axis, idx))
  return plan


_DROP = object()


def shrink(tree, spec: spec_lib.Spec, keep: dict):
  """Slices the coupled tensors of every pytree laid out like params (or nesting such trees).

  Works on params, batch_stats and optax states alike, since their leaves sit under the same
  module paths. Modules of layers with no channel kept are removed.
  """
  plan = slicing_plan(spec, keep)
  # A conv with no input or no output channel, or a BN with no channel, has no parameters.
  emptied = {m for m, slices in plan.items() if any(len(idx) == 0 for _, idx in slices)}

  def walk(node, path):
    if isinstance(node, dict):
      out = {}
      for k, v in node.items():
        v2 = walk(v, path + (k,))
        if v2 is not _DROP:
          out[k] = v2
      return _DROP if node and not out else out
    if isinstance(node, tuple) and hasattr(node, '_fields'):  # optax states
      return type(node)(*(walk(v, path) for v in node))
    if isinstance(node, (tuple, list)):
      return type(node)(walk(v, path) for v in node)
    module = path[-3:-1] if len(path) >= 3 else None
    if module in emptied:
      return _DROP
    if module in plan and hasattr(node, 'ndim') and node.ndim:
      # Concrete arrays are sliced on the host: an eager jnp.take would compile a program for
      # every tensor shape of every compaction.
      take = jnp.take if isinstance(node, jax.core.Tracer) else np.take
      if take is np.take:
        node = parallel.host_copy(node)
      for axis, idx in plan[module]:
        axis = axis if node.ndim == 4 else 0  # BN vectors and their slots are 1-D
        node = take(node, np.asarray(idx), axis=axis)
      node = jnp.asarray(node)
    return node

  out = walk(tree, ())
  return {} if out is _DROP else out


def shrink_state(state: train_lib.TrainState, spec: spec_lib.Spec, keep: dict):
  """A TrainState whose params, batch stats and optimizer slots are sliced to `keep`."""
  return state.replace(params=shrink(state.params, spec, keep),
                       batch_stats=shrink(state.batch_stats, spec, keep),
                       opt_state=shrink(state.opt_state, spec, keep))


# Per-channel statistics a criterion can ask for (`criteria.register(needs=...)`). The prune step
# computes each from one batch and sums it over the steps since the last removal. g: the
# per-example gradients (N, C) of the batch's mean loss with respect to the channel gates, so
# sum_n g_nc = dL/ds_c, the gradient with respect to a scale on channel c, and N g_nc is example
# n's own; a: the channel's mean activation (C,) where its gate sits (after BN and ReLU).
ACCUMULATORS = {
    'fisher': lambda g, a: 0.5 * jnp.mean(jnp.square(g), axis=0),  # Theis et al.'s Fisher term
    'grad': lambda g, a: jnp.sum(g, axis=0),                 # dL/ds_c, signed
    'grad_sq': lambda g, a: jnp.square(jnp.sum(g, axis=0)),  # (dL/ds_c)^2 (Molchanov et al. 2019)
    'grad_abs': lambda g, a: jnp.sum(jnp.abs(g), axis=0),    # mean_n |N g_nc|, per example
    'activation': lambda g, a: a,                            # mean activation
}


def check_accumulators(names):
  unknown = sorted(set(names) - set(ACCUMULATORS))
  if unknown:
    raise ValueError(f'unknown accumulator(s) {unknown}; expected some of {sorted(ACCUMULATORS)}')


class PruneState(flax.struct.PyTreeNode):
  """A fine-tuning state plus, per prunable layer, the live mask and accumulated statistics."""
  train: train_lib.TrainState
  mask: dict   # {name: (C,) float32}, 1 for live channels
  stats: dict  # {accumulator: {name: (C,) float32}} summed since the last removal; gradient
               # statistics are 0 where masked (models.gate gives no gradient through a zero
               # gate, and rank skips masked channels)


def init_prune_state(state: train_lib.TrainState, spec: spec_lib.Spec,
                     accumulators=('fisher',)) -> PruneState:
  check_accumulators(accumulators)
  ones = {n: jnp.ones((w,), jnp.float32) for n, w in zip(spec.prunable_names, spec.prunable)}
  return PruneState(state, ones, {a: jax.tree.map(jnp.zeros_like, ones) for a in accumulators})


def make_prune_step(model, tx, ds, *, crop_pad: int, flip: bool, pad_mode: str = 'zeros',
                    accumulators=('fisher',)):
  """(PruneState, batch) -> (PruneState, metrics): SGD on the masked net, with the statistics
  `accumulators` (names of ACCUMULATORS, the keys of the state's `stats`) summed from the same
  backward pass. Asking for none computes none. Random crops pad with zeros by default, as the
  reference's pruning script does."""
  check_accumulators(accumulators)
  preprocess = train_lib.make_preprocess(ds, crop_pad=crop_pad, flip=flip, dtype=model.dtype,
                                         pad_mode=pad_mode)
  record = 'activation' in accumulators
  update = train_lib.make_update(model, tx, record_activations=record)

  def prune_step(ps: PruneState, batch):
    n = batch['label'].shape[0]
    # Per-example gates, 1 on live channels: the gradient wrt gate (n, c) is g_nc (0 if masked).
    gates = {k: jnp.broadcast_to(m, (n, m.shape[0])) for k, m in ps.mask.items()}
    x = preprocess(ps.train.rng, ps.train.step, batch['image'])
    state, metrics, gate_grads = update(ps.train, x, batch['label'], gates)
    gate_grads, activations = gate_grads if record else (gate_grads, {})
    stats = {
        acc: {k: total + ACCUMULATORS[acc](gate_grads[k].astype(jnp.float32),
                                           activations.get(k))
              for k, total in ps.stats[acc].items()}
        for acc in accumulators}
    return PruneState(state, ps.mask, stats), metrics

  return prune_step


def make_eval_step(model, ds):
  """`train.make_eval_step` on a PruneState: the masked channels are gated to zero, so the
  network is evaluated as the compacted one would be."""
  eval_step = train_lib.make_eval_step(model, ds)

  def masked_eval_step(ps: PruneState, batch):
    return eval_step(ps.train, batch, ps.mask)

  return masked_eval_step
