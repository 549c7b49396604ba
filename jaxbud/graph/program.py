"""The compacted program: the analysed call re-evaluated at the compacted shapes, no factory.

linen cannot apply smaller variables to the module they came from (its scope checks shapes),
so without a user factory the smaller network is the traced program itself, evaluated equation
by equation on the sliced variables. Every value's new shape is known from the analysis: an
axis keeps the positions whose channels are kept in every group covering it. The primitives
whose parameters carry a shape get them rewritten (`reshape` new_sizes, `broadcast_in_dim`,
`iota` and `random_bits` shape, `split` sizes, `slice` offsets, `conv_general_dilated`
feature_group_count); the rest compute their shapes from their operands. Every result is
checked against the shape the analysis predicts.

Calls are inlined (their jaxprs are typed at the old shapes); `remat` is re-applied around the
inlined body. So the program loses custom derivative rules (`custom_jvp`, `custom_vjp`): its
values are the same, its gradients are those of the primal operations.
"""
import jax
import numpy as np

from jaxbud.errors import UsageError
from jaxbud.graph import evaluate as evaluate_lib
from jaxbud.graph import rules
from jaxbud.graph.analysis import _is_array  # pylint: disable=protected-access
from jaxbud.graph.analysis import expand
from jaxbud.graph.analysis import inputs

_SHAPED = ('broadcast_in_dim', 'iota', 'random_bits', 'rng_bit_generator', 'full')


class Program:
  """program(variables, *args, **kwargs): the analysed call on compacted variables. Static
  keyword arguments (train=True, mutable=[...]) are those of the analysed call."""

  def __init__(self, traced, analysis, keep: dict):
    self.traced, self.analysis = traced, analysis
    axes = analysis.ctx.axes
    by_name = {n: a for a, n in analysis.atoms.items()}
    self._keep = {axes.find(by_name[n]): np.asarray(k) for n, k in keep.items()}
    self._kept = {}

  def kept(self, node) -> np.ndarray:
    """Bool over the positions of axis `node`: True where the channel stays."""
    axes = self.analysis.ctx.axes
    r = axes.find(node)
    if r not in self._kept:
      m = np.ones(axes.size[r], bool)
      for atom, idx, _ in expand(axes, r):
        if atom in self._keep:
          m &= (idx < 0) | np.isin(idx, self._keep[atom])
      self._kept[r] = m
    return self._kept[r]

  def shape(self, nodes) -> tuple:
    return tuple(int(self.kept(n).sum()) for n in nodes)

  def __call__(self, variables, *args, **kwargs):
    static = [x for x in jax.tree.leaves(kwargs) if not _is_array(x)]
    if jax.tree.structure(kwargs) != self.traced.kw_tree or static != self.traced.kw_static:
      raise UsageError('the compacted program runs the call that was analysed; pass the same '
                       'keyword arguments (analyse again with others, e.g. train=True)')
    closed = self.traced.closed
    flat = evaluate_lib.evaluate(closed.jaxpr, closed.consts, inputs(variables, args, kwargs),
                                 self._bind)
    return jax.tree.unflatten(jax.tree.structure(self.traced.out_shape), flat)

  def _bind(self, eqn, ins, here, _):
    """The equation at the new shapes, its results checked against the analysis."""
    in_nodes, out_nodes, _ = self.analysis.ctx.record[here]
    shapes = [self.shape(n) for n in out_nodes]
    outs = evaluate_lib.bind(eqn, ins, self._params(eqn, ins, in_nodes, shapes))
    for x, s in zip(outs, shapes):
      if tuple(np.shape(x)) != s:
        raise ValueError(f'internal error: {rules.where(eqn, here, "")} gave shape '
                         f'{np.shape(x)} in the compacted program, the analysis says {s}')
    return outs

  def _params(self, eqn, ins, in_nodes, shapes):
    """The equation's parameters at the new shapes."""
    name, p = eqn.primitive.name, dict(eqn.params)
    if name == 'reshape':
      p['new_sizes'] = shapes[0]
    elif name in _SHAPED and 'shape' in p:
      p['shape'] = shapes[0]
    elif name == 'split':
      p['sizes'] = tuple(s[p['axis']] for s in shapes)
    elif name == 'slice':
      starts, limits = list(p['start_indices']), list(p['limit_indices'])
      for d, node in enumerate(in_nodes[0]):
        kept = self.kept(node)
        if not kept.all():
          starts[d] = int(kept[:starts[d]].sum())
          limits[d] = starts[d] + shapes[0][d]
      p['start_indices'], p['limit_indices'] = tuple(starts), tuple(limits)
    elif name == 'conv_general_dilated' and p['feature_group_count'] > 1:
      dn = p['dimension_numbers']
      per_group = np.shape(ins[1])[dn.rhs_spec[1]]
      p['feature_group_count'] = np.shape(ins[0])[dn.lhs_spec[1]] // max(per_group, 1)
    return p
