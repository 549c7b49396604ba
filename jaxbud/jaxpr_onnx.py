"""A JAX function as an ONNX model: its jaxpr lowered primitive by primitive.

Covers the lax primitives of an inference pass of jaxbud's networks (convolutions, pooling,
elementwise arithmetic, reductions, the dense head, concatenation, reshapes and broadcasts);
any other primitive is an error that names it. Equations whose inputs are all known at
conversion time (batch-norm folding such as rsqrt(var + eps) * scale, broadcasts of constants)
are evaluated then, so the graph holds the folded constants. Symbolic input dimensions
(`jax.export.symbolic_shape`, e.g. the batch) stay symbolic: ONNX `dim_param`s, read at run time
with Shape. Convolutions and pools are NCHW in ONNX: each gets Transposes around it, which
onnxruntime's transpose optimizer cancels between neighbouring layers. Operators are those of
ONNX opset 13 and later. docs/export.md says why jaxbud lowers the jaxpr itself.
"""
import itertools

import jax
from jax.extend import core as jex_core
import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper

MIN_OPSET = 13
_NCHW, _NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
_CALL_PARAMS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')  # jit, custom_jvp_call, custom_vjp_call
_BINARY = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min',
           'pow': 'Pow'}
_UNARY = {'neg': 'Neg', 'exp': 'Exp', 'log': 'Log', 'sqrt': 'Sqrt', 'tanh': 'Tanh',
          'logistic': 'Sigmoid', 'abs': 'Abs', 'copy': 'Identity', 'copy_p': 'Identity'}


def _np_broadcast_in_dim(x, shape, broadcast_dimensions, **_):
  interim = [1] * len(shape)
  for i, d in enumerate(broadcast_dimensions):
    interim[d] = x.shape[i]
  return np.broadcast_to(x.reshape(interim), shape)


# Folding with numpy: binding the primitive would compile it once per shape (seconds for a
# DenseNet's hundreds of distinct widths). Others fall back to binding.
_NUMPY = {
    'add': lambda x, y, **_: x + y, 'sub': lambda x, y, **_: x - y, 'mul': lambda x, y, **_: x * y,
    'div': lambda x, y, **_: x / y, 'max': lambda x, y, **_: np.maximum(x, y),
    'min': lambda x, y, **_: np.minimum(x, y), 'neg': lambda x, **_: -x,
    'sqrt': lambda x, **_: np.sqrt(x), 'rsqrt': lambda x, **_: np.reciprocal(np.sqrt(x)),
    'square': lambda x, **_: x * x,
    'convert_element_type': lambda x, new_dtype, **_: x.astype(new_dtype),
    'broadcast_in_dim': _np_broadcast_in_dim,
    'reshape': lambda x, new_sizes, dimensions=None, **_: x.reshape(new_sizes),
    'transpose': lambda x, permutation, **_: np.transpose(x, permutation),
    'squeeze': lambda x, dimensions, **_: np.squeeze(x, tuple(dimensions)),
    'concatenate': lambda *xs, dimension, **_: np.concatenate(xs, dimension),
}


def _fold(eqn, ins):
  """The outputs of an equation whose inputs are all constants, computed now."""
  fn, out = _NUMPY.get(eqn.primitive.name), eqn.outvars[0].aval
  if fn is not None and np.issubdtype(out.dtype, np.floating):
    y = np.asarray(fn(*ins, **eqn.params))
    if y.dtype == out.dtype and y.shape == tuple(out.shape):
      return [y]
  outs = eqn.primitive.bind(*ins, **eqn.params)
  return [np.asarray(o) for o in (outs if eqn.primitive.multiple_results else [outs])]


def max_opset() -> int:
  """The newest opset of the installed onnx package."""
  return onnx.defs.onnx_opset_version()


class _Tensor:
  """A value computed at run time: its ONNX name and its JAX shape and dtype."""

  def __init__(self, name, shape, dtype):
    self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)


def _static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


class _Builder:
  """ONNX nodes and initializers, and the run-time tensors of symbolic dimensions."""

  def __init__(self):
    self.nodes, self.initializers, self.dims = [], {}, {}
    self._ids = itertools.count()
    self._shapes = {}

  def fresh(self, hint) -> str:
    return f'{hint}_{next(self._ids)}'

  def node(self, op, inputs, **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
    return out

  def const(self, array, hint='const') -> str:
    name = self.fresh(hint)
    self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
    return name

  def name(self, v) -> str:
    return v.name if isinstance(v, _Tensor) else self.const(v)

  def shape(self, shape) -> str:
    """A 1-D int64 tensor holding `shape`, symbolic dimensions read from the inputs."""
    if _static(shape):
      return self.const(np.asarray(shape, np.int64), 'shape')
    key = tuple(str(d) for d in shape)
    if key not in self._shapes:
      parts = []
      for d in shape:
        if _static((d,)):
          parts.append(self.const(np.asarray([d], np.int64), 'dim'))
        elif str(d) in self.dims:
          parts.append(self.dims[str(d)])
        else:
          raise NotImplementedError(f'dimension {d} is not an input dimension; only plain '
                                    'symbolic input dimensions (such as the batch) are supported')
      self._shapes[key] = self.node('Concat', parts, axis=0)
    return self._shapes[key]


def _tensor(eqn, name):
  aval = eqn.outvars[0].aval
  return _Tensor(name, aval.shape, aval.dtype)


def _transposed(b, v, perm) -> str:
  """The name of `v` with its axes permuted (constants permuted now)."""
  if isinstance(v, np.ndarray):
    return b.const(np.transpose(v, perm))
  return b.node('Transpose', [v.name], perm=list(perm))


def _conv(b, eqn, x, w):
  p = eqn.params
  dn = p['dimension_numbers']
  if len(x.shape) != 4:
    raise NotImplementedError('only 2-D convolutions are supported')
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise NotImplementedError('transposed and batch-grouped convolutions are not supported')
  (top, bottom), (left, right) = p['padding']
  y = b.node('Conv', [_transposed(b, x, dn.lhs_spec), _transposed(b, w, dn.rhs_spec)],
             strides=list(p['window_strides']), dilations=list(p['rhs_dilation']),
             pads=[top, left, bottom, right], group=p['feature_group_count'])
  return _tensor(eqn, b.node('Transpose', [y], perm=[int(i) for i in np.argsort(dn.out_spec)]))


def _pool(b, eqn, x, op):
  p = eqn.params
  win, strides, pads = p['window_dimensions'], p['window_strides'], p['padding']
  if len(win) != 4 or win[0] != 1 or win[3] != 1 or strides[0] != 1 or strides[3] != 1 or any(
      tuple(pads[i]) != (0, 0) for i in (0, 3)):
    raise NotImplementedError(f'{eqn.primitive.name} is supported over the H, W axes of NHWC')
  if any(d != 1 for d in tuple(p['base_dilation']) + tuple(p['window_dilation'])):
    raise NotImplementedError(f'dilated {eqn.primitive.name} is not supported')
  attrs = dict(kernel_shape=list(win[1:3]), strides=list(strides[1:3]),
               pads=[pads[1][0], pads[2][0], pads[1][1], pads[2][1]])
  if op == 'AveragePool':
    attrs['count_include_pad'] = 1
  y = b.node(op, [_transposed(b, x, _NCHW)], **attrs)
  if op == 'AveragePool':  # a window sum is the window mean times its size
    y = b.node('Mul', [y, b.const(np.asarray(win[1] * win[2], x.dtype))])
  return _tensor(eqn, b.node('Transpose', [y], perm=list(_NHWC)))


def _dot_general(b, eqn, x, w):
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  if lb or rb or tuple(lc) != (len(x.shape) - 1,) or len(w.shape) != 2 or tuple(rc) not in (
      (0,), (1,)):
    raise NotImplementedError('dot_general is supported as x @ W (a matrix) only')
  w = _transposed(b, w, (1, 0)) if tuple(rc) == (1,) else b.name(w)
  return _tensor(eqn, b.node('MatMul', [b.name(x), w]))


def _broadcast_in_dim(b, eqn, x):
  out = eqn.params['shape']
  interim = [1] * len(out)
  for i, d in enumerate(eqn.params['broadcast_dimensions']):
    interim[d] = x.shape[i]
  y = b.name(x)
  if tuple(interim) != tuple(x.shape):
    y = b.node('Reshape', [y, b.shape(interim)])
  if tuple(str(d) for d in interim) != tuple(str(d) for d in out):
    y = b.node('Expand', [y, b.shape(out)])
  return _tensor(eqn, y)


def _lower(b, eqn, args, opset):
  """One equation with at least one run-time input, as ONNX nodes; returns its output."""
  prim, p = eqn.primitive.name, eqn.params
  names = lambda: [b.name(a) for a in args]  # pylint: disable=unnecessary-lambda-assignment
  if prim in _BINARY:
    return _tensor(eqn, b.node(_BINARY[prim], names()))
  if prim in _UNARY:
    return _tensor(eqn, b.node(_UNARY[prim], names()))
  if prim == 'rsqrt':
    return _tensor(eqn, b.node('Reciprocal', [b.node('Sqrt', names())]))
  if prim == 'square':
    return _tensor(eqn, b.node('Mul', names() * 2))
  if prim == 'convert_element_type':
    to = helper.np_dtype_to_tensor_dtype(np.dtype(p['new_dtype']))
    return _tensor(eqn, b.node('Cast', names(), to=to))
  if prim == 'conv_general_dilated':
    return _conv(b, eqn, *args)
  if prim == 'reduce_window_sum':
    return _pool(b, eqn, args[0], 'AveragePool')
  if prim == 'reduce_window_max':
    return _pool(b, eqn, args[0], 'MaxPool')
  if prim in ('reduce_sum', 'reduce_max'):
    axes = np.asarray(p['axes'], np.int64)
    op = 'ReduceSum' if prim == 'reduce_sum' else 'ReduceMax'
    if op == 'ReduceMax' and opset < 18:
      return _tensor(eqn, b.node(op, names(), axes=list(axes), keepdims=0))
    return _tensor(eqn, b.node(op, names() + [b.const(axes, 'axes')], keepdims=0))
  if prim == 'dot_general':
    return _dot_general(b, eqn, *args)
  if prim == 'reshape':
    if p.get('dimensions') is not None:
      raise NotImplementedError('reshape with dimensions is not supported')
    return _tensor(eqn, b.node('Reshape', names() + [b.shape(p['new_sizes'])]))
  if prim == 'broadcast_in_dim':
    return _broadcast_in_dim(b, eqn, args[0])
  if prim == 'concatenate':
    return _tensor(eqn, b.node('Concat', names(), axis=p['dimension']))
  if prim == 'squeeze':
    axes = b.const(np.asarray(p['dimensions'], np.int64), 'axes')
    return _tensor(eqn, b.node('Squeeze', names() + [axes]))
  if prim == 'transpose':
    return _tensor(eqn, b.node('Transpose', names(), perm=list(p['permutation'])))
  raise NotImplementedError(f'the JAX primitive {prim!r} has no ONNX lowering in jaxbud')


def _run(b, jaxpr, consts, args, opset):
  """Evaluates a jaxpr over constants (numpy) and run-time values (_Tensor)."""
  env = {}

  def read(v):
    if isinstance(v, jex_core.Literal):
      return np.asarray(v.val, v.aval.dtype)
    return env[v]

  for var, val in zip(jaxpr.constvars, consts):
    env[var] = np.asarray(val)
  for var, val in zip(jaxpr.invars, args):
    env[var] = val
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
    if sub is not None:  # jit, custom_jvp/vjp calls: inline the function itself
      outs = _run(b, sub.jaxpr, sub.consts, ins, opset)
    elif all(isinstance(a, np.ndarray) for a in ins) and all(
        _static(o.aval.shape) for o in eqn.outvars):  # known now: fold it
      outs = _fold(eqn, ins)
    else:
      if len(eqn.outvars) != 1:
        raise NotImplementedError(f'the JAX primitive {eqn.primitive.name!r} has no ONNX '
                                  'lowering in jaxbud')
      outs = [_lower(b, eqn, ins, opset)]
    for var, val in zip(eqn.outvars, outs):
      env[var] = val
  return [read(v) for v in jaxpr.outvars]


def _value_info(name, shape, dtype):
  dims = [int(d) if _static((d,)) else str(d) for d in shape]
  return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                       dims)


def _prune(nodes, initializers, outputs):
  """Only the nodes and initializers the outputs depend on (drops dead zero-width paths)."""
  live, kept = set(outputs), []
  for n in reversed(nodes):
    if any(o in live for o in n.output):
      kept.append(n)
      live.update(i for i in n.input if i)
  return kept[::-1], [t for name, t in initializers.items() if name in live]


def convert(fn, args, opset: int = 17, input_names=None, output_names=None,
            name: str = 'jaxbud') -> onnx.ModelProto:
  """`fn` (arrays in, one array or a tuple out) as an ONNX model for inputs like `args`.

  `args` are jax.ShapeDtypeStructs; dimensions made with jax.export.symbolic_shape stay
  symbolic in the model. Constants that `fn` closes over become initializers.
  """
  if not MIN_OPSET <= opset <= max_opset():
    raise ValueError(f'opset {opset} is not supported; use {MIN_OPSET} to {max_opset()}')
  closed = jax.make_jaxpr(fn)(*args)
  b = _Builder()
  input_names = list(input_names or [f'input{i}' for i in range(len(args))])
  inputs = []
  for name_, a in zip(input_names, args):
    inputs.append(_value_info(name_, a.shape, a.dtype))
    for axis, d in enumerate(a.shape):
      if not _static((d,)) and str(d) not in b.dims:
        if not str(d).isidentifier():
          raise NotImplementedError(f'input dimension {d} must be a plain symbol')
        b.dims[str(d)] = b.node('Slice', [b.node('Shape', [name_]),
                                          b.const(np.asarray([axis], np.int64), 'start'),
                                          b.const(np.asarray([axis + 1], np.int64), 'end')])
  outs = _run(b, closed.jaxpr, closed.consts,
              [_Tensor(n, a.shape, a.dtype) for n, a in zip(input_names, args)], opset)
  output_names = list(output_names or [f'output{i}' for i in range(len(outs))])
  outputs = []
  for name_, v, var in zip(output_names, outs, closed.jaxpr.outvars):
    b.nodes.append(helper.make_node('Identity', [b.name(v)], [name_], name=f'{name_}_out'))
    outputs.append(_value_info(name_, var.aval.shape, var.aval.dtype))
  nodes, initializers = _prune(b.nodes, b.initializers, output_names)
  graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
  opsets = [helper.make_opsetid('', opset)]
  model = helper.make_model(graph, opset_imports=opsets, producer_name='jaxbud',
                            ir_version=helper.find_min_ir_version_for(opsets))
  onnx.checker.check_model(model)
  return model
