"""Theis et al.'s Fisher saliency for every channel group of any model, with no model changes.

Removing channel c of a group means that nothing downstream sees it. So the per-example gate of
a group multiplies its channels where they are *consumed*: at every convolution or dense layer
(`conv_general_dilated`, `dot_general`) whose operand carries the group's channels and whose
result does not (the channel is contracted away there). That is after the batch norm and the
activation, where jaxbud's hand-placed `models.apply_gate` sits, never between a convolution and
the batch norm that follows it (which would cancel the gate). A channel that passes through a
depthwise or grouped convolution, a residual add or a concatenation is not consumed there, so
a residual stream or a concatenated segment gets one gate shared by all its consumers: the
next block's convolutions, the shortcut, the classifier. Setting that gate to zero is removing
the channel, and its gradient is the sum of the gradients at each consumer.

The gates are put in by re-evaluating the traced program (`jax.make_jaxpr`) equation by
equation with the gated operands multiplied; calls without a gate inside (a custom-VJP batch
norm, `jax.nn.relu`) are bound as they are, keeping their derivative rules, and calls with one
inside are inlined (`remat` is re-applied around the inlined body). The gradient with respect
to the gates, per example, comes from the same backward pass as the loss and the parameter
gradients: `fisher_step`. With g_nc that gradient of the batch's mean loss, the saliency is
0.5 * mean_n g_nc^2, `prune.ACCUMULATORS['fisher']`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import models
from jaxbud.errors import UsageError
from jaxbud.graph.analysis import analyze_traced
from jaxbud.graph.analysis import expand
from jaxbud.graph.analysis import inputs
from jaxbud.graph.analysis import trace
from jaxbud.graph import nnx_module
from jaxbud.graph import evaluate as evaluate_lib



def gate_sites(analysis, names) -> dict:
  """{equation site: [(operand, batch axis, [(axis, group name, index or None)])]}: where the
  groups `names` are consumed (an activation axis, one with the example axis beside it, that a
  convolution or dot_general sums over), and how each gate maps onto that axis (index[i] the
  group channel at position i, -1 for none; None when the axis is exactly the group)."""
  ctx, axes = analysis.ctx, analysis.ctx.axes
  if not analysis.in_nodes or not analysis.in_nodes[0]:
    raise UsageError('fisher needs the model called with a batched array as its first '
                     'positional argument (its axis 0 is the example axis)')
  batch = axes.find(analysis.in_nodes[0][0])
  wanted = {a: n for a, n in analysis.atoms.items() if n in names}
  sites = {}
  for site, (ins, _, contracted) in ctx.record.items():
    by_operand = {}
    for k, axis, node in contracted:
      by_operand.setdefault(k, []).append((axis, {axes.find(a) for a in axes.atoms(node)}))
    for k, summed in by_operand.items():
      b = [i for i, n in enumerate(ins[k]) if axes.find(n) == batch]
      if not b:
        continue  # a parameter operand: the kernel is not gated, the activation is
      gated = []
      for axis, atoms in summed:
        for atom, idx, part in expand(axes, ins[k][axis]):
          if atom in wanted and atom in atoms:
            gated.append((axis, wanted[atom], None if part == '' else np.asarray(idx)))
      if gated:
        sites.setdefault(site, []).append((k, b[0], gated))
  return sites


def _expand_gate(gate, index):
  """(N, C) gate -> (N, len(index)): gate[:, index[i]], 1 where index[i] is -1."""
  if index is None:
    return gate
  full = jnp.take(gate, np.maximum(index, 0), axis=1)
  return jnp.where(index >= 0, full, jnp.ones((), gate.dtype))


@jax.custom_vjp
def _lean_gate(x, m):
  """x * m (m broadcastable to x) with `models.gate`'s lean backward: only y = x * m is kept,
  and dm = sum(y * dy) / m over the broadcast axes (0 where m is 0)."""
  return x * m.astype(x.dtype)


def _lean_fwd(x, m):
  y = x * m.astype(x.dtype)
  return y, (y, m)


def _lean_bwd(res, dy):
  y, m = res
  axes = tuple(i for i, (a, b) in enumerate(zip(m.shape, y.shape)) if a == 1 and b != 1)
  s = jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32), axis=axes, keepdims=True)
  live = m != 0
  dm = jnp.where(live, s / jnp.where(live, m, 1).astype(jnp.float32), 0)
  return dy * m.astype(dy.dtype), dm.astype(m.dtype)


_lean_gate.defvjp(_lean_fwd, _lean_bwd)


def _apply_gates(x, batch_axis, gated, gates):
  ndim = x.ndim
  if ndim == 4 and batch_axis == 0 and len(gated) == 1 and gated[0][0] == 3:
    # NHWC, one gate on the channels: jaxbud's own gate, with its CPU-tuned reduction.
    _, name, index = gated[0]
    return models.gate(x, _expand_gate(gates[name], index))
  m = None
  for axis, name, index in gated:
    g = _expand_gate(gates[name], index)
    shape = [1] * ndim
    shape[batch_axis], shape[axis] = g.shape[0], g.shape[1]
    g = g.reshape(shape) if batch_axis < axis else jnp.swapaxes(g, 0, 1).reshape(shape)
    m = g if m is None else m * g
  return _lean_gate(x, m)


def _has_site(sites, prefix):
  return any(s.startswith(prefix) for s in sites)


def _gated_bind(sites):
  """`evaluate`'s bind: the equation with the gates multiplied into the operands `sites` names
  for it (site strings as `rules.interpret` numbers the equations)."""

  def bind(eqn, ins, here, gates):
    ins = list(ins)
    for k, batch_axis, gated in sites.get(here, ()):
      ins[k] = _apply_gates(ins[k], batch_axis, gated, gates)
    return evaluate_lib.bind(eqn, ins)

  return bind


class _Call:
  """One traced and analysed call of the model, with the gate sites of the groups asked for."""

  def __init__(self, apply_fn, variables, args, kwargs, names):
    self.traced = trace(apply_fn, variables, args, kwargs)
    analysis = analyze_traced(self.traced, jax.tree.structure(variables),
                                          record=True)
    self.groups = analysis.groups
    if names is None:
      if not self.groups.prunable:
        raise UsageError('no channel group of this model can be pruned: every group is '
                         'frozen (print jg.analyze(...) to see what froze each)')
      names = [g.name for g in self.groups.prunable]
    for n in names:
      if n not in self.groups:
        raise UsageError(f'groups names {n!r}, which the traced model has no group of; its '
                         f'prunable groups are {[g.name for g in self.groups.prunable][:8]}')
      if not self.groups[n].prunable:
        raise UsageError(f'group {n!r} is frozen ({self.groups[n].frozen_by[0]}) and has no '
                         'saliency; leave it out')
    self.names = tuple(names)
    self.sites = gate_sites(analysis, set(self.names))
    gated = {name for per_site in self.sites.values() for _, _, axes in per_site
             for _, name, _ in axes}
    ungated = [n for n in self.names if n not in gated]
    if ungated:  # a score of 0 would rank them first: refuse instead
      raise UsageError(f'no convolution or dense layer consumes group(s) {ungated} beside the '
                       'example axis, so fisher cannot gate them; pass groups= without them')
    self.batch = self.traced.in_shapes[0][0]

  def gate_shapes(self):
    return {n: (self.batch, self.groups[n].size) for n in self.names}

  def __call__(self, variables, args, kwargs, gates):
    closed = self.traced.closed
    # Calls with no gate inside are bound whole, keeping their derivative rules.
    flat = evaluate_lib.evaluate(closed.jaxpr, closed.consts, inputs(variables, args, kwargs),
                                 _gated_bind(self.sites),
                                 inline=lambda prefix: _has_site(self.sites, prefix),
                                 carry=gates)
    return jax.tree.unflatten(jax.tree.structure(self.traced.out_shape), flat)


def _names(groups):
  if groups is None:
    return None
  if hasattr(groups, 'prunable') and hasattr(groups, 'groups'):
    return [g.name for g in groups.prunable]
  return list(groups)


def fisher_step(apply_fn, loss_fn, groups=None, has_aux=False):
  """A pure, jittable step(variables, batch) -> (loss, grads, fisher), or ((loss, aux), grads,
  fisher) with `has_aux`, from one forward and one backward pass.

  `loss_fn(apply, batch)` returns the batch's mean loss (and aux), calling the model once as
  `apply(*args, **kwargs)`, which runs `apply_fn(variables, *args, **kwargs)` with the gates in;
  the first positional argument's axis 0 is the example axis. `grads` is the gradient of the
  loss with respect to every leaf of `variables`; `fisher` is {group name: (C,) float32
  0.5 * mean_n g_nc^2} for the prunable groups (those of `groups`, a `Groups` or names, when
  given). Accumulate it over steps by summing, as `prune.make_prune_step` does."""
  step = gate_grad_step(apply_fn, loss_fn, groups, has_aux)

  def with_fisher(variables, batch):
    value, grads, gate_grads = step(variables, batch)
    return value, grads, {n: 0.5 * jnp.mean(jnp.square(g), axis=0)
                          for n, g in gate_grads.items()}

  return with_fisher


def gate_grad_step(apply_fn, loss_fn, groups=None, has_aux=False):
  """As `fisher_step`, with the per-example gate gradients themselves in place of the Fisher
  saliency: {group name: (N, C) float32 g_nc}, the input of every `prune.ACCUMULATORS` entry
  but 'activation'."""
  names = _names(groups)
  if nnx_module.is_nnx(apply_fn):
    raise UsageError('fisher takes (apply_fn, variables); for an nnx module pass '
                     '*jaxbud.graph.nnx_module.functional(module) instead of the module')

  def step(variables, batch):
    calls = []

    def probe(*args, **kwargs):
      if calls:
        raise UsageError('loss_fn called the model more than once; fisher gates one call')
      calls.append(_Call(apply_fn, variables, args, kwargs, names))
      return apply_fn(variables, *args, **kwargs)

    jax.eval_shape(lambda: loss_fn(probe, batch))
    if not calls:
      raise UsageError('loss_fn never called the model: it gets `apply` as its first argument '
                       'and must compute the loss with apply(inputs, ...)')
    call = calls[0]
    gates = {n: jnp.ones(s, jnp.float32) for n, s in call.gate_shapes().items()}

    def loss(v, g):
      apply = lambda *args, **kwargs: call(v, args, kwargs, g)
      return loss_fn(apply, batch)

    value, (grads, gate_grads) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=has_aux)(
        variables, gates)
    return value, grads, {n: g.astype(jnp.float32) for n, g in gate_grads.items()}

  return step


def fisher(apply_fn, variables, batch, loss_fn, groups=None, has_aux=False) -> dict:
  """{group name: (C,) Fisher saliency} of one batch (see `fisher_step`, which also returns the
  loss and the parameter gradients from the same backward pass)."""
  return fisher_step(apply_fn, loss_fn, groups, has_aux)(variables, batch)[2]
