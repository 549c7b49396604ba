"""`analyze`: channel groups of any Flax network, read from its jaxpr.

The network is traced once with `jax.make_jaxpr` over (variables, *args); every variable leaf
is an input of the jaxpr, in `tree_flatten_with_path` order. Channel axes are propagated through
the program with the per-primitive rules of `rules` into a union-find of axes (`axes`), and the
classes that reach variable leaves become the groups. The inputs and the outputs of the model
are frozen (image channels and logits cannot be pruned); variables the model returns updated
(train-mode batch statistics under `mutable`) are unified with the variables they update.
"""
import collections.abc
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxbud.graph import nnx_module
from jaxbud.graph import rules
from jaxbud.graph.axes import Axes
from jaxbud.graph.axes import CAT
from jaxbud.graph.groups import Entry
from jaxbud.graph.groups import Group
from jaxbud.graph.groups import Groups


def _key(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def key_path(path) -> tuple:
  return tuple(_key(k) for k in path)


def _state_outputs(out_shape, var_paths):
  """{output leaf position: variable path} for outputs that are updated variables: the second
  element of a linen (output, mutated variables) pair, at paths and shapes of `variables`."""
  leaves = jax.tree_util.tree_flatten_with_path(out_shape)[0]
  found = {}
  if not (isinstance(out_shape, tuple) and len(out_shape) == 2 and
          isinstance(out_shape[1], collections.abc.Mapping)):
    return found
  for i, (path, leaf) in enumerate(leaves):
    if path and _key(path[0]) == '1':
      p = key_path(path[1:])
      if var_paths.get(p) == tuple(getattr(leaf, 'shape', ())):
        found[i] = p
  return found


def expand(axes, node):
  """[(atom root, index array, part)] for the axis `node`: index[i] is the atom's channel at
  position i of the axis, or -1 where other atoms sit; part says where ('' for the whole axis,
  '[a:b]' for a segment, '(factor j of k)' for a factor of a product, nested left to right)."""
  r = axes.find(node)
  size = axes.size[r]
  s = axes.struct[r]
  if s is None:
    return [(r, np.arange(size), '')]
  out = []
  if s[0] == CAT:
    pos = 0
    for p in s[1]:
      psize = axes.size[axes.find(p)]
      for atom, idx, part in expand(axes, p):
        full = np.full(size, -1)
        full[pos:pos + psize] = idx
        out.append((atom, full, f'[{pos}:{pos + psize}]{part}'))
      pos += psize
    return out
  sizes = [axes.size[axes.find(p)] for p in s[1]]
  stride = size
  flat = np.arange(size)
  for j, (p, psize) in enumerate(zip(s[1], sizes)):
    stride //= psize
    digit = (flat // stride) % psize
    for atom, idx, part in expand(axes, p):
      out.append((atom, idx[digit], f'(factor {j + 1} of {len(sizes)}){part}'))
  return out


def _propagate_frozen(axes):
  """A frozen structured class freezes every part below it."""
  for root in list(axes.frozen):
    if axes.find(root) != root or axes.struct[root] is None:
      continue
    for atom in axes.atoms(root):
      for reason in axes.frozen[root]:
        axes.freeze(atom, reason)


def _name(entries, used):
  """A readable unique name: the module of the kernel producing the channels (its last axis),
  as in `spec.prunable_names`, else the first leaf."""
  kernels = [e for e in entries if e.path[0] == 'params' and e.path[-1] == 'kernel' and
             len(e.path) > 2 and e.axis == e.ndim - 1]
  whole = [e for e in kernels if not e.part]
  if whole:
    best = '/'.join(whole[0].module)
  elif kernels:
    best = '/'.join(kernels[0].module) + kernels[0].part
  else:
    e = entries[0]
    best = f'{e.leaf}:{e.axis}{e.part}'
  name, k = best, 1
  while name in used:
    k += 1
    name = f'{best}#{k}'
  used.add(name)
  return name


_WINDOW = ('a convolution window', 'a pooling window')


class Traced(NamedTuple):
  """One traced call apply_fn(variables, *args, **kwargs): its closed jaxpr, whose inputs are the
  variable leaves, the leaves of args, then the array leaves of kwargs (the rest of kwargs,
  such as train=True, is static); and the shape of its outputs."""
  closed: Any
  out_shape: Any
  var_paths: tuple
  var_shapes: tuple
  in_shapes: tuple  # of the non-variable inputs: args' leaves, then kwargs' array leaves
  kw_tree: Any = None
  kw_static: list = ()  # the kwargs leaves that are not arrays (train=True, 'batch_stats')


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic))


def inputs(variables, args, kwargs) -> list:
  """The jaxpr inputs of a call, in the order `trace` gives them."""
  return (jax.tree.leaves(variables) + jax.tree.leaves(args) +
          [x for x in jax.tree.leaves(kwargs) if _is_array(x)])


def trace(apply_fn, variables, args, kwargs) -> Traced:
  kw_leaves, kw_tree = jax.tree.flatten(kwargs)
  dynamic = [i for i, x in enumerate(kw_leaves) if _is_array(x)]

  def fn(v, a, kw_arrays):
    leaves = list(kw_leaves)
    for i, x in zip(dynamic, kw_arrays):
      leaves[i] = x
    return apply_fn(v, *a, **jax.tree.unflatten(kw_tree, leaves))

  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(
      variables, tuple(args), [kw_leaves[i] for i in dynamic])
  var_leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  n = len(var_leaves)
  return Traced(closed, out_shape, tuple(key_path(p) for p, _ in var_leaves),
                tuple(tuple(np.shape(v)) for _, v in var_leaves),
                tuple(tuple(v.aval.shape) for v in closed.jaxpr.invars[n:]), kw_tree,
                [x for x in kw_leaves if not _is_array(x)])


class Analysis(NamedTuple):
  """What `fisher` needs besides the groups: the propagation context (with every equation's
  axis nodes recorded), the nodes of the non-variable inputs, and each group's atom."""
  groups: Any
  ctx: Any
  in_nodes: list
  atoms: dict  # {atom (union-find root): group name}


def analyze_traced(traced: Traced, treedef, record: bool = False) -> Analysis:
  closed, out_shape = traced.closed, traced.out_shape
  paths, shapes = list(traced.var_paths), list(traced.var_shapes)
  axes = Axes()
  var_nodes = [tuple(axes.new(d) for d in s) for s in shapes]
  ctx = rules.Context(axes, var_nodes)
  if record:
    ctx.record = {}
  arg_nodes = [ctx.fresh(s) for s in traced.in_shapes]
  for nodes, s in zip(arg_nodes, traced.in_shapes):
    ctx.freeze_all(nodes, s, 'an input of the model', min_size=0)
  consts = [ctx.fresh(np.shape(c), 'a constant captured by the model') for c in closed.consts]
  outs = rules.interpret(ctx, closed.jaxpr, consts, var_nodes + arg_nodes)

  state = _state_outputs(out_shape, dict(zip(paths, shapes)))
  index = {p: i for i, p in enumerate(paths)}
  for i, (nodes, v) in enumerate(zip(outs, closed.jaxpr.outvars)):
    if i in state:
      for a, b in zip(nodes, var_nodes[index[state[i]]]):
        ctx.unify(a, b, f'the update of {"/".join(state[i])}')
    else:
      ctx.freeze_all(nodes, tuple(v.aval.shape), 'an output of the model', min_size=0)
  _propagate_frozen(axes)

  by_atom = {}
  for path, shape, nodes in zip(paths, shapes, var_nodes):
    for axis, (node, d) in enumerate(zip(nodes, shape)):
      if d == 0:
        continue
      for atom, idx, part in expand(axes, node):
        by_atom.setdefault(atom, []).append(Entry(path, axis, idx, len(shape), part))
  order = lambda e: ctx.first_use.get(index[e.path], len(paths) + index[e.path])
  used, groups, atoms = set(), [], {}
  for atom, entries in sorted(by_atom.items(), key=lambda kv: min(map(order, kv[1]))):
    entries = sorted(entries, key=order)
    reasons = tuple(axes.frozen.get(atom, ()))
    if reasons and all(r.startswith(_WINDOW) for r in reasons):
      continue  # the spatial axes of kernels: not channels
    groups.append(Group(_name(entries, used), axes.size[atom], tuple(entries), reasons))
    atoms[atom] = groups[-1].name
  return Analysis(Groups(groups, treedef, paths, shapes), ctx, arg_nodes, atoms)


def analyze(apply_fn, variables, *args, **kwargs) -> Groups:
  """The channel groups of `apply_fn(variables, *args, **kwargs)` (e.g. a linen `model.apply`
  and its variables dict; keyword arguments such as train=True or mutable=['batch_stats'] are
  passed through). Returns `Groups`; print it to see every group, its leaves and why a frozen
  group is frozen. A flax.nnx module is analysed as `analyze(module, *args)`
  (`nnx_module.functional`): leaves are named ('params', ...) and ('batch_stats', ...)."""
  if nnx_module.is_nnx(apply_fn):
    args = (variables,) + args
    apply_fn, variables = nnx_module.functional(apply_fn)
  traced = trace(apply_fn, variables, args, kwargs)
  analysis = analyze_traced(traced, jax.tree.structure(variables), record=True)
  analysis.groups.source = (traced, analysis)  # for the compacted program
  return analysis.groups
