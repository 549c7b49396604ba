"""Per-primitive channel rules: how each primitive maps its operands' axes to its results'.

A rule gets the propagation context, the equation, one tuple of axis nodes per operand and the
location of the equation, and returns one tuple of axis nodes per result. `RULES` is the table;
`interpret` applies it to a jaxpr, inlining calls (jit, custom_jvp, custom_vjp, remat) with a
fresh scope per call site: the environment mapping the callee's variables to nodes is new for
every call, so two calls of one (cached, identical) jaxpr never share nodes. A primitive without
a rule freezes every axis it touches and names itself in the reason.
"""
import math

from jax.extend import core as jex_core

from jaxbud.graph.axes import CAT
from jaxbud.graph.axes import PROD
from jaxbud.graph.axes import Unrefinable

try:  # file:line of the user's code; private, so only used when present
  from jax._src import source_info_util as _source_info
except ImportError:  # pragma: no cover
  _source_info = None


class Context:
  """The axis union-find of one analysis, and helpers shared by the rules."""

  def __init__(self, axes, leaves=()):
    self.axes = axes
    # Program order of the variable leaves (by the node tuples they enter with): groups are
    # listed, and named after their producing kernel, in the order the program uses them.
    self.leaf_ids = {id(nodes): i for i, nodes in enumerate(leaves)}
    self.first_use = {}
    # {equation site: (operand nodes, result nodes, [(operand, axis, node summed over)])}
    # when not None: `fisher` reads from it which equation consumes which channels (the part
    # of an operand axis a convolution or dot_general sums over, not the group factor it
    # passes on), and the compacted program the new shape of every value.
    self.record = None
    self._summed = []

  def contracted(self, operand, axis, node):
    self._summed.append((operand, axis, node))

  def fresh(self, shape, reason=None):
    nodes = tuple(self.axes.new(d) for d in shape)
    if reason:
      for n, d in zip(nodes, shape):
        if d > 1:
          self.axes.freeze(n, reason)
    return nodes

  def unify(self, a, b, where):
    """Unifies two axes; if their structures cannot be refined exactly, freezes both."""
    try:
      self.axes.unify(a, b)
    except Unrefinable as e:
      self.axes.freeze(a, f'{e} ({where})')
      self.axes.freeze(b, f'{e} ({where})')

  def freeze_all(self, nodes, shape, reason, min_size=2):
    """Freezes the axes of size >= min_size (0: all, for the model's own inputs and outputs,
    whose single channel is as fixed as many)."""
    for n, d in zip(nodes, shape):
      if d >= min_size:
        self.axes.freeze(n, reason)


def _shape(v):
  return tuple(v.aval.shape) if hasattr(v.aval, 'shape') else ()


def where(eqn, site: str, prefix: str) -> str:
  """'primitive at name/stack (equation 3/12, file.py:40)'."""
  stack = str(getattr(eqn.source_info, 'name_stack', '') or '')
  stack = '/'.join(s for s in (prefix, stack) if s) or 'top level'
  line = ''
  if _source_info is not None:
    try:
      line = ', ' + _source_info.summarize(eqn.source_info).split(' (')[0].split('/')[-1]
    except Exception:  # pylint: disable=broad-except
      line = ''
  return f'{eqn.primitive.name} at {stack} (equation {site}{line})'


# Rules ---------------------------------------------------------------------------------------

def elementwise(ctx, eqn, ins, loc):
  """Same-shape operands: unify axes of equal size only, so a size-1 (broadcast) axis couples
  nothing (mask[B,H,W,1] * x leaves x's channel alone)."""
  outs = []
  for v in eqn.outvars:
    shape = _shape(v)
    out = list(ctx.fresh(shape))
    for x, xv in zip(ins, eqn.invars):
      if len(_shape(xv)) != len(shape):
        continue
      for i, (a, d) in enumerate(zip(x, _shape(xv))):
        if d == shape[i]:
          ctx.unify(out[i], a, loc)
        else:  # a size-1 axis broadcast: its one channel is spread over many, so it stays
          ctx.axes.freeze(a, f'broadcast by {loc}')
    outs.append(tuple(out))
  return outs


def passthrough(ctx, eqn, ins, loc):
  """Each result is its operand (optimization_barrier and friends)."""
  return [tuple(x) for x in ins]


def broadcast_in_dim(ctx, eqn, ins, loc):
  shape = eqn.params['shape']
  out = list(ctx.fresh(shape))
  for i, d in enumerate(eqn.params['broadcast_dimensions']):
    if _shape(eqn.invars[0])[i] == shape[d]:
      out[d] = ins[0][i]
    else:  # size 1 -> size n: couples nothing, and the single channel cannot be removed
      ctx.axes.freeze(ins[0][i], f'broadcast by {loc}')
  return [tuple(out)]


def transpose(ctx, eqn, ins, loc):
  return [tuple(ins[0][p] for p in eqn.params['permutation'])]


def squeeze(ctx, eqn, ins, loc):
  drop = {d % len(ins[0]) for d in eqn.params['dimensions']}
  return [tuple(a for i, a in enumerate(ins[0]) if i not in drop)]


def reshape(ctx, eqn, ins, loc):
  """Merges and splits become products of factors, matched from the minor end (so an NHWC
  flatten makes the channel the minor factor of the flat axis). Whatever cannot be matched
  exactly (a reshape that shuffles) is frozen."""
  axes = ctx.axes
  new_shape = tuple(eqn.params['new_sizes'])
  if eqn.params.get('dimensions') is not None:
    reason = f'a reshape with a transposition: {loc}'
    ctx.freeze_all(ins[0], _shape(eqn.invars[0]), reason)
    return [ctx.fresh(new_shape, reason)]
  old_shape = _shape(eqn.invars[0])
  if [d for d in old_shape if d != 1] == [d for d in new_shape if d != 1]:
    return [_reshape_ones(ctx, ins[0], old_shape, new_shape)]
  parts = [f for n in ins[0] for f in axes.factors(n)]
  sizes = [d for d in new_shape if d != 1]
  try:
    matched, unmatched, rest, minor = axes.match_factors(parts, sizes)
  except Unrefinable as e:
    matched, unmatched, rest, minor = [], len(sizes), parts, []
    loc = f'{e} ({loc})'
  if unmatched:
    reason = f'a reshape that does not keep this axis whole: {loc}'
    for p in rest:
      axes.freeze(p, reason)
    blob = [ctx.fresh((s,), reason)[0] for s in sizes[:unmatched]]
    if minor:  # the partly matched axis keeps its minor factors (the channel of a flatten)
      size = sizes[unmatched - 1]
      done = math.prod(axes.size[axes.find(m)] for m in minor)
      hi = ctx.fresh((size // done,), reason)[0]
      blob[-1] = axes.compose(PROD, [hi] + minor)
    matched = blob + matched
  it = iter(matched)
  return [tuple(next(it) if d != 1 else axes.new(1) for d in new_shape)]


def _reshape_ones(ctx, nodes, old_shape, new_shape):
  """A reshape that only adds or drops size-1 axes: axes matched from the minor end, so a
  size-1 channel (a conv's single output and its bias reshaped to (1, 1, 1, 1)) is kept."""
  out, i = [], len(old_shape) - 1
  for d in reversed(new_shape):
    while i >= 0 and old_shape[i] == 1 and d != 1:
      i -= 1
    if i >= 0 and old_shape[i] == d:
      out.append(nodes[i])
      i -= 1
    else:
      out.append(ctx.axes.new(d))
  return tuple(reversed(out))


def reduction(ctx, eqn, ins, loc):
  """Kept axes pass through; reducing over an axis of size > 1 freezes it (LayerNorm, softmax,
  a channel mean): its channels are mixed into one value."""
  reduced = set(eqn.params['axes'])
  shape = _shape(eqn.invars[0])
  for d in reduced:
    if shape[d] > 1:
      ctx.axes.freeze(ins[0][d], f'reduced over by {loc}')
  kept = tuple(a for i, a in enumerate(ins[0]) if i not in reduced)
  return [kept] * len(eqn.outvars)


def cumulative(ctx, eqn, ins, loc):
  d = eqn.params['axis']
  ctx.axes.freeze(ins[0][d], f'scanned over by {loc}')
  return [tuple(ins[0])]


def window(ctx, eqn, ins, loc):
  """Pooling: an axis with a window of 1, stride 1, no padding or dilation passes through;
  any other axis (the spatial ones) is frozen."""
  p = eqn.params
  n = len(eqn.invars) // 2 if eqn.primitive.name == 'reduce_window' else len(eqn.invars)
  outs = []
  for k, v in enumerate(eqn.outvars):
    out = list(ctx.fresh(_shape(v)))
    for i in range(len(out)):
      plain = (p['window_dimensions'][i] == 1 and p['window_strides'][i] == 1 and
               tuple(p['padding'][i]) == (0, 0) and p['base_dilation'][i] == 1 and
               p['window_dilation'][i] == 1)
      if plain:
        out[i] = ins[k % n][i]
      else:
        ctx.axes.freeze(ins[k % n][i], f'a pooling window of {loc}')
        ctx.axes.freeze(out[i], f'a pooling window of {loc}')
    outs.append(tuple(out))
  return outs


def pad(ctx, eqn, ins, loc):
  out = list(ctx.fresh(_shape(eqn.outvars[0])))
  for i, cfg in enumerate(eqn.params['padding_config']):
    if tuple(cfg) == (0, 0, 0):
      out[i] = ins[0][i]
    else:
      ctx.axes.freeze(ins[0][i], f'padded by {loc}')
      ctx.axes.freeze(out[i], f'padded by {loc}')
  return [tuple(out)]


def rev(ctx, eqn, ins, loc):
  for d in eqn.params['dimensions']:
    ctx.axes.freeze(ins[0][d], f'reversed by {loc}')
  return [tuple(ins[0])]


def _grouped(ctx, node, groups, loc):
  """node as (group factor, per-group factor) for `groups` groups, or freezes it."""
  if groups == 1:
    return ctx.axes.new(1), node
  try:
    size = ctx.axes.size[ctx.axes.find(node)]
    return ctx.axes.split_minor(node, size // groups)
  except Unrefinable as e:
    ctx.axes.freeze(node, f'{e} ({loc})')
    size = ctx.axes.size[ctx.axes.find(node)]
    return ctx.fresh((groups, size // groups), f'{e} ({loc})')


def conv(ctx, eqn, ins, loc):
  """The input feature axis is the kernel's input axis; the kernel's output axis is the output
  feature axis. With feature_group_count G both feature axes are (G x per-group) products whose
  group factors are one; a depthwise conv (one input and one output channel per group) thereby
  couples its input and output channels, a conv with one output channel does not. Window axes
  freeze, and so does everything of a conv with batch_group_count > 1."""
  p = eqn.params
  lhs, rhs = ins
  dn = p['dimension_numbers']
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  out_shape = _shape(eqn.outvars[0])
  out = list(ctx.fresh(out_shape))
  if p.get('batch_group_count', 1) != 1:
    reason = f'batch_group_count > 1 in {loc}'
    ctx.freeze_all(lhs, _shape(eqn.invars[0]), reason)
    ctx.freeze_all(rhs, _shape(eqn.invars[1]), reason)
    return [ctx.fresh(out_shape, reason)]
  reason = f'a convolution window of {loc}'
  for i in lhs_spec[2:]:
    ctx.axes.freeze(lhs[i], reason)
  for i in rhs_spec[2:]:
    ctx.axes.freeze(rhs[i], reason)
  for i in out_spec[2:]:
    ctx.axes.freeze(out[i], reason)
  out[out_spec[0]] = lhs[lhs_spec[0]]
  g = p['feature_group_count']
  g_in, per_in = _grouped(ctx, lhs[lhs_spec[1]], g, loc)
  g_out, _ = _grouped(ctx, rhs[rhs_spec[0]], g, loc)
  if g > 1 and ctx.axes.size[ctx.axes.find(per_in)] == 1:
    # One input channel per group (depthwise): the kernel's input axis has nothing to cut.
    ctx.axes.freeze(rhs[rhs_spec[1]], f'one input channel per group in {loc}')
  if g > 1:
    ctx.unify(g_in, g_out, loc)
  ctx.unify(per_in, rhs[rhs_spec[1]], loc)
  ctx.contracted(0, lhs_spec[1], per_in)
  ctx.contracted(1, rhs_spec[1], rhs[rhs_spec[1]])
  out[out_spec[1]] = rhs[rhs_spec[0]]
  return [tuple(out)]


def dot_general(ctx, eqn, ins, loc):
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  lhs, rhs = ins
  for a, b in zip(lc, rc):
    ctx.unify(lhs[a], rhs[b], loc)
    ctx.contracted(0, a, lhs[a])
    ctx.contracted(1, b, rhs[b])
  for a, b in zip(lb, rb):
    ctx.unify(lhs[a], rhs[b], loc)
  free_l = [lhs[i] for i in range(len(lhs)) if i not in lc and i not in lb]
  free_r = [rhs[i] for i in range(len(rhs)) if i not in rc and i not in rb]
  return [tuple([lhs[i] for i in lb] + free_l + free_r)]


def concatenate(ctx, eqn, ins, loc):
  d = eqn.params['dimension']
  out = list(ins[0])
  for x in ins[1:]:
    for i in range(len(out)):
      if i != d:
        ctx.unify(out[i], x[i], loc)
  out[d] = ctx.axes.compose(CAT, [x[d] for x in ins])
  return [tuple(out)]


def _slice_axis(ctx, node, start, stop, loc):
  """The node of [start, stop) of an axis. A cut strictly inside a segment of a concatenation
  freezes that segment: its channels would be split between two consumers at an offset that
  moves when the segments before it shrink. A cut of an unconcatenated axis (a chunk) just
  splits it into two groups."""
  axes = ctx.axes
  before = []
  if (axes.structure(node) or (None,))[0] == CAT:
    pos = 0
    for seg in axes.segments(node):
      size = axes.size[axes.find(seg)]
      before.append((seg, pos, size))
      pos += size
  try:
    part = axes.segment(node, start, stop)
  except Unrefinable as e:
    axes.freeze(node, f'{e} ({loc})')
    return ctx.fresh((stop - start,), f'{e} ({loc})')[0]
  for seg, pos, size in before:
    if pos < start < pos + size or pos < stop < pos + size:
      axes.freeze(seg, f'sliced off a concatenation segment boundary by {loc}')
  return part


def slice_(ctx, eqn, ins, loc):
  p = eqn.params
  out = []
  in_shape = _shape(eqn.invars[0])
  strides = p.get('strides') or (1,) * len(in_shape)
  for i, (a, lo, hi, st) in enumerate(zip(ins[0], p['start_indices'], p['limit_indices'],
                                          strides)):
    if lo == 0 and hi == in_shape[i] and st == 1:
      out.append(a)
    elif st != 1:
      ctx.axes.freeze(a, f'a strided slice of {loc}')
      out.append(ctx.fresh((_shape(eqn.outvars[0])[i],), f'a strided slice of {loc}')[0])
    else:
      out.append(_slice_axis(ctx, a, lo, hi, loc))
  return [tuple(out)]


def split(ctx, eqn, ins, loc):
  d, outs, start = eqn.params['axis'], [], 0
  for size in eqn.params['sizes']:
    nodes = list(ins[0])
    nodes[d] = _slice_axis(ctx, ins[0][d], start, start + size, loc)
    outs.append(tuple(nodes))
    start += size
  return outs


def shape_only(ctx, eqn, ins, loc):
  """Random bits and the like: fresh result axes; nothing of the operands flows into them."""
  return [ctx.fresh(_shape(v)) for v in eqn.outvars]


def iota(ctx, eqn, ins, loc):
  out = ctx.fresh(_shape(eqn.outvars[0]))
  ctx.axes.freeze(out[eqn.params['dimension']], f'index values of {loc}')
  return [out]


def unknown(ctx, eqn, ins, loc):
  """No rule: every axis of size > 1 it touches is frozen, naming the primitive."""
  reason = f'no channel rule for {loc}'
  for x, v in zip(ins, eqn.invars):
    ctx.freeze_all(x, _shape(v), reason, min_size=0)
  outs = [ctx.fresh(_shape(v)) for v in eqn.outvars]
  for x, v in zip(outs, eqn.outvars):
    ctx.freeze_all(x, _shape(v), reason, min_size=0)
  return outs


_ELEMENTWISE = '''add add_any sub mul div rem pow max min neg sign floor ceil round is_finite exp
exp2 log log1p expm1 sqrt rsqrt cbrt tanh logistic sin cos tan asin acos atan atan2 sinh cosh
asinh acosh atanh abs integer_pow square erf erfc erf_inv lgamma digamma convert_element_type
select_n clamp and or not xor eq ne lt le gt ge shift_left shift_right_logical
shift_right_arithmetic nextafter copy copy_p reduce_precision real imag conj stop_gradient
threefry2x32 random_wrap random_unwrap random_bits_to_float population_count clz'''.split()

RULES = {name: elementwise for name in _ELEMENTWISE}
RULES.update({
    'broadcast_in_dim': broadcast_in_dim, 'transpose': transpose, 'squeeze': squeeze,
    'reshape': reshape, 'conv_general_dilated': conv, 'dot_general': dot_general,
    'concatenate': concatenate, 'slice': slice_, 'split': split, 'pad': pad, 'rev': rev,
    'iota': iota, 'random_bits': shape_only, 'random_seed': shape_only,
    'random_split': shape_only, 'random_fold_in': shape_only,
    'optimization_barrier': passthrough, 'sharding_constraint': passthrough,
    'pvary': passthrough,
})
for _name in ('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'reduce_and', 'reduce_or',
              'reduce_xor', 'argmax', 'argmin'):
  RULES[_name] = reduction
for _name in ('cumsum', 'cumprod', 'cummax', 'cummin', 'cumlogsumexp'):
  RULES[_name] = cumulative
for _name in ('reduce_window_sum', 'reduce_window_max', 'reduce_window_min', 'reduce_window'):
  RULES[_name] = window

# Calls inlined with a fresh scope per call site: the parameter holding the callee.
CALLS = {'pjit': 'jaxpr', 'jit': 'jaxpr', 'closed_call': 'call_jaxpr', 'core_call': 'call_jaxpr',
         'custom_jvp_call': 'call_jaxpr', 'custom_vjp_call': 'call_jaxpr',
         'custom_vjp_call_jaxpr': 'fun_jaxpr', 'remat': 'jaxpr', 'remat2': 'jaxpr',
         'checkpoint': 'jaxpr', 'custom_lin': None}


def _literal(ctx, v):
  return ctx.fresh(_shape(v), 'a constant' if any(d > 1 for d in _shape(v)) else None)


def interpret(ctx, jaxpr, consts_nodes, in_nodes, site='', prefix=''):
  """Propagates axis nodes through `jaxpr` (open); returns the nodes of its results."""
  env = {}
  for v, n in zip(jaxpr.constvars, consts_nodes):
    env[v] = n
  for v, n in zip(jaxpr.invars, in_nodes):
    env[v] = n

  def read(v):
    return _literal(ctx, v) if isinstance(v, jex_core.Literal) else env[v]

  for i, eqn in enumerate(jaxpr.eqns):
    name = eqn.primitive.name
    ins = [read(v) for v in eqn.invars]
    eqn_site = f'{site}{i}'
    key = CALLS.get(name, '')
    callee = eqn.params.get(key) if key else None
    if callee is not None:
      closed = callee if isinstance(callee, jex_core.ClosedJaxpr) else None
      inner = closed.jaxpr if closed is not None else callee
      consts = [ctx.fresh(getattr(c, 'shape', ()), 'a constant of a called function')
                for c in (closed.consts if closed is not None else [])]
      stack = str(getattr(eqn.source_info, 'name_stack', '') or '')
      outs = interpret(ctx, inner, consts, ins, f'{eqn_site}/',
                       '/'.join(s for s in (prefix, stack) if s))
    else:
      for x in ins:  # calls pass leaves on: their first use is inside
        if id(x) in ctx.leaf_ids:
          ctx.first_use.setdefault(ctx.leaf_ids[id(x)], len(ctx.first_use))
      loc = where(eqn, eqn_site, prefix)
      ctx._summed = []  # pylint: disable=protected-access
      outs = RULES.get(name, unknown)(ctx, eqn, ins, loc)
      if ctx.record is not None:
        ctx.record[eqn_site] = (ins, outs, ctx._summed)  # pylint: disable=protected-access
    for v, n in zip(eqn.outvars, outs):
      env[v] = n
  return [read(v) for v in jaxpr.outvars]
