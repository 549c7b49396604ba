"""Flax linen networks built from width specs (WRN, DenseNet-BC, ImageNet ResNet).

Every module name is deterministic and every prunable width of the spec is the output width of
exactly one conv, whose path (``block3/conv1``) is the spec's ``prunable_names`` entry. Modules
take an optional ``gates`` dict keyed by those names: a (C,) or (N, C) array multiplied into the
channel right after that conv's BN and ReLU. Gates of ones leave the output unchanged; their
gradient (taken where a gate is non-zero, see `gate`) is what Fisher pruning needs, and zeros in
them mask channels without changing shapes.

A conv whose input has zero channels (its producer was pruned away) outputs zeros and has no
parameters, which is exactly what the masked full-width network computes.
"""
import contextlib
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbud import parallel
from jaxbud import spec as spec_lib

# N(0, sqrt(2 / (kh * kw * out_channels))): He initialisation with fan-out, untruncated.
he_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# With PLAIN_XLA the CPU-tuned pieces give way to plain code: flax.linen.BatchNorm instead of
# `BatchNorm` (autodiff instead of the hand-written backward) and a plain jnp.sum instead of
# `channel_sum`'s reshaped reduction, so a benchmark can check what they cost or save on another
# backend. The same variables and (up to float rounding) the same numbers. Read while a model is
# traced: set it (`plain_xla`, or JAXBUD_PLAIN_XLA=1 in the environment) before jitting.
PLAIN_XLA = os.environ.get('JAXBUD_PLAIN_XLA') == '1'


@contextlib.contextmanager
def plain_xla(enabled: bool = True):
  """Within the block, models traced use plain XLA code (see PLAIN_XLA) if `enabled`."""
  global PLAIN_XLA
  before, PLAIN_XLA = PLAIN_XLA, enabled
  try:
    yield
  finally:
    PLAIN_XLA = before


class ConvBNModule(nn.Module):
  """Base class of every network module: its conv and BN factories (explicit symmetric padding,
  the reference BN settings) and the compute dtype."""
  dtype: jnp.dtype = jnp.float32

  def conv(self, x, features, kernel, stride=1, name=None):
    pad = (kernel - 1) // 2
    if x.shape[-1] == 0 or features == 0:  # a pruned-away path: exact zeros, no parameters
      h = (x.shape[1] + 2 * pad - kernel) // stride + 1
      w = (x.shape[2] + 2 * pad - kernel) // stride + 1
      return jnp.zeros((x.shape[0], h, w, features), self.dtype)
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=he_fan_out, dtype=self.dtype, name=name)(x)

  def bn(self, x, train, name=None):
    if x.shape[-1] == 0:
      return x
    # PyTorch momentum 0.1 is Flax momentum 0.9.
    return (nn.BatchNorm if PLAIN_XLA else BatchNorm)(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        name=name)(x)


def channel_sum(x, per_example: bool = False):
  """float32 sum of NHWC `x` over N, H, W -> (C,), or over H, W only -> (N, C).

  On CPU it is computed as a wide row reduction: XLA:CPU reduces a (rows, C) array with a small
  C slowly (rewritten into reduce-windows that ran at about 3 GB/s); viewed as
  (rows / k, k * C) with k * C about 256 and then summed over k, the batch-norm backward pass
  of WRN-40-2 runs 2x faster and the train step 12% faster (docs/benchmarks.md), and the sum
  is more accurate (k partial sums). Other backends reduce the array as it is, since there the
  reshape would change the tiled layout.
  """
  if PLAIN_XLA:
    axes = tuple(range(1 if per_example else 0, x.ndim - 1))
    return jnp.sum(x.astype(jnp.float32), axis=axes)
  n, c = (x.shape[0] if per_example else 1), x.shape[-1]
  rows = x.size // max(c * n, 1)
  k = max(1, 256 // max(c, 1)) if jax.default_backend() == 'cpu' else 1
  while rows % k:
    k //= 2
  s = jnp.sum(x.reshape(n, rows // k, k * c).astype(jnp.float32), axis=1)
  s = s.reshape(n, k, c).sum(axis=1)
  return s if per_example else s[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
  """Training-mode batch norm of NHWC `x` -> (y, batch mean, biased batch variance).

  The numbers of ``flax.linen.BatchNorm`` (statistics in float32, var = E[x^2] - E[x]^2, then
  y = (x - mean) * rsqrt(var + eps) * scale + bias in float32, cast to x's dtype), with a
  hand-written backward pass whose two reductions go through `channel_sum`. The cotangents of
  the returned statistics (zero in training, which only stores them) are honoured too.
  """
  return _bn_fwd(x, scale, bias, epsilon)[0]


def _bn_fwd(x, scale, bias, epsilon):
  m = x.size // x.shape[-1]
  xf = x.astype(jnp.float32)
  mean = channel_sum(xf) / m
  var = jnp.maximum(channel_sum(xf * xf) / m - mean * mean, 0.)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (rstd * scale) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, rstd, scale, bias)


def _bn_bwd(epsilon, res, cts):
  del epsilon
  x, mean, rstd, scale, bias = res
  dy, dmean, dvar = cts
  m = x.size // x.shape[-1]
  xc, g = x.astype(jnp.float32) - mean, dy.astype(jnp.float32)
  xhat = xc * rstd
  dbias = channel_sum(g)
  dscale = channel_sum(g * xhat)
  dx = (scale * rstd) * (g - (dbias + xhat * dscale) / m)
  dx = dx + (dmean + 2 * dvar * xc) / m
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the last axis: the same variables and numbers, a faster
  backward pass on XLA:CPU (`batch_norm_train`).

  Variables: params ``scale`` (ones) and ``bias`` (zeros), float32; batch_stats ``mean``
  (zeros) and ``var`` (ones), float32, updated in training as
  ``momentum * old + (1 - momentum) * batch`` (flax's convention: PyTorch's momentum 0.1 is
  0.9 here). Checkpoints of either module load into the other.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    x = x.astype(self.dtype)
    if self.use_running_average:
      mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((x.astype(jnp.float32) - ra_mean.value) * mul + bias).astype(self.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def _broadcast_gate(g, like):
  """(N, C) -> (N, 1, 1, C) in `like`'s dtype; a (C,) gate broadcasts as it is."""
  return (g[:, None, None, :] if g.ndim == 2 else g).astype(like.dtype)


@jax.custom_vjp
def gate(x, g):
  """x * g for NHWC `x` and a (C,) or per-example (N, C) gate `g`, with a lean backward pass.

  The forward is exactly the product, so zeros in `g` mask channels. The backward saves only the
  gated output y = x * g, which the next conv keeps for its weight gradient anyway. Autodiff of
  the product also writes x as a second activation-sized tensor per gate and reads it back
  (a VJP that saves x compiles to the same program), which is why the Fisher step cost 8-35%
  more than a train step on XLA:CPU (docs/benchmarks.md). From y it returns dx = dy * g and
  dg = sum(y * dy) / g over the axes `g` was broadcast along, accumulated in float32: the exact
  gradient sum(x * dy) wherever g != 0. Where g == 0, x is gone and dg is 0; those are masked
  channels, which pruning never ranks. Reverse mode only (custom_vjp: no jax.jvp through it).
  """
  return x * _broadcast_gate(g, x)


def _gate_fwd(x, g):
  y = x * _broadcast_gate(g, x)
  return y, (y, g)


def _gate_bwd(res, dy):
  y, g = res
  s = channel_sum(y.astype(jnp.float32) * dy.astype(jnp.float32), per_example=g.ndim == 2)
  live = g != 0
  dg = jnp.where(live, s / jnp.where(live, g, 1).astype(jnp.float32), 0)
  return dy * _broadcast_gate(g, dy), dg.astype(g.dtype)


gate.defvjp(_gate_fwd, _gate_bwd)


def apply_gate(x, gates, name):
  """Multiplies channel gate `gates[name]` ((C,) or per-example (N, C)) into NHWC `x`."""
  if gates is None or name not in gates:
    return x
  g = jnp.asarray(gates[name])
  return gate(x, g if jnp.issubdtype(g.dtype, jnp.floating) else g.astype(jnp.float32))


def gated(module: nn.Module, x, gates, name):
  """`apply_gate` inside a block, which also records the mean activation per channel of `x`
  (float32, over batch and space) in the `intermediates` collection when the caller made it
  mutable (`train.make_update(record_activations=True)`); otherwise that costs nothing."""
  if module.is_mutable_collection('intermediates'):
    module.sow('intermediates', f'mean_{name.split("/")[-1]}',
               jnp.mean(x.astype(jnp.float32), axis=(0, 1, 2)))
  return apply_gate(x, gates, name)


def gate_activations(intermediates) -> dict:
  """{gate name: (C,) mean activation} from the `intermediates` that `gated` recorded."""
  return {f'{block}/{key[len("mean_"):]}': values[0]
          for block, recorded in intermediates.items()
          for key, values in recorded.items() if key.startswith('mean_')}


def channel_bn(spec, name: str) -> tuple[str, str]:
  """(block, BN module) of the batch norm that normalises prunable layer `name`'s channels:
  pre-activation networks (WRN, DenseNet-BC) normalise conv_k's output in bn_{k+1}, the
  post-activation ResNet in bn_k."""
  block, conv = name.split('/')
  k = int(conv[len('conv'):])
  return block, (f'bn{k + 1}' if spec.family in ('wrn', 'densenet_bc') else f'bn{k}')


def bn_l1(spec, params) -> jax.Array:
  """Sum of |gamma| over the BN scales of every prunable channel: network slimming's sparsity
  penalty (Liu et al. 2017), which `train.bn_l1` adds to the training loss."""
  total = jnp.zeros((), jnp.float32)
  for name, w in zip(spec.prunable_names, spec.prunable):
    if w:
      block, bn = channel_bn(spec, name)
      total += jnp.sum(jnp.abs(params[block][bn]['scale'].astype(jnp.float32)))
  return total


def check_gates(spec, gates):
  """Gate names must be prunable layers of `spec`: a typo would otherwise silently do nothing."""
  unknown = sorted(set(gates or {}) - set(spec.prunable_names))
  if unknown:
    raise ValueError(f'unknown gate name(s) {unknown}; gates are keyed by spec.prunable_names, '
                     f'e.g. {spec.prunable_names[0]!r}')


# torch.nn.Linear's default weight init, kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in),
# 1/sqrt(fan_in)). The reference keeps it for its classifiers and zeroes their bias.
torch_linear_kernel = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def torch_linear_bias(fan_in: int):
  """torch.nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def _head(x, num_classes, dtype, torch_bias=False):
  """Global average pool, then the classifier: weight as torch.nn.Linear's default; bias 0
  as the reference's WRN and DenseNet set it, or with `torch_bias` torch's default (torchvision's
  ResNets leave it so)."""
  x = jnp.mean(x, axis=(1, 2))
  bias_init = torch_linear_bias(x.shape[-1]) if torch_bias else nn.initializers.zeros
  return nn.Dense(num_classes, kernel_init=torch_linear_kernel, bias_init=bias_init,
                  dtype=dtype, name='head')(x)


class WRNBlock(ConvBNModule):
  """Pre-activation block; the inner width (conv1 out = conv2 in) is the prunable one."""
  inner: int = 0
  out: int = 0
  stride: int = 1

  @nn.compact
  def __call__(self, x, train, gates=None):
    o = nn.relu(self.bn(x, train, name='bn1'))
    y = nn.relu(self.bn(self.conv(o, self.inner, 3, self.stride, name='conv1'), train, name='bn2'))
    y = self.conv(gated(self, y, gates, f'{self.name}/conv1'), self.out, 3, name='conv2')
    if x.shape[-1] != self.out or self.stride != 1:
      x = self.conv(o, self.out, 1, self.stride, name='shortcut')
    return x + y


class WRN(ConvBNModule):
  spec: spec_lib.WRNSpec = None
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False, gates=None):
    check_gates(self.spec, gates)
    x = self.conv(x.astype(self.dtype), self.spec.stem, 3, name='stem')
    for name, _, inner, out, stride in self.spec.blocks():
      x = WRNBlock(self.dtype, inner, out, stride, name=name)(x, train, gates)
    x = nn.relu(self.bn(x, train, name='bn'))
    return _head(x, self.num_classes, self.dtype)


class DenseLayer(ConvBNModule):
  """Bottleneck dense layer; the bottleneck width (conv1 out) is the prunable one."""
  bottleneck: int = 0
  growth: int = 0

  @nn.compact
  def __call__(self, x, train, gates=None):
    y = nn.relu(self.bn(x, train, name='bn1'))
    y = nn.relu(self.bn(self.conv(y, self.bottleneck, 1, name='conv1'), train, name='bn2'))
    y = self.conv(gated(self, y, gates, f'{self.name}/conv1'), self.growth, 3, name='conv2')
    return jnp.concatenate([x, y], axis=-1)


class Transition(ConvBNModule):
  out: int = 0

  @nn.compact
  def __call__(self, x, train):
    x = self.conv(nn.relu(self.bn(x, train, name='bn')), self.out, 1, name='conv')
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetBC(ConvBNModule):
  spec: spec_lib.DenseNetSpec = None
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False, gates=None):
    check_gates(self.spec, gates)
    x = self.conv(x.astype(self.dtype), self.spec.stem, 3, name='stem')
    for kind, name, *rest in self.spec.layers():
      if kind == 'layer':
        _, bottleneck, growth = rest
        x = DenseLayer(self.dtype, bottleneck, growth, name=name)(x, train, gates)
      else:
        x = Transition(self.dtype, rest[1], name=name)(x, train)
    x = nn.relu(self.bn(x, train, name='bn'))
    return _head(x, self.num_classes, self.dtype)


class ResNetBlock(ConvBNModule):
  """Post-activation basic (3x3, 3x3) or bottleneck (1x1, 3x3 strided, 1x1) block."""
  inner: tuple = ()
  out: int = 0
  stride: int = 1

  @nn.compact
  def __call__(self, x, train, gates=None):
    kernels = (3, 3) if len(self.inner) == 1 else (1, 3, 1)
    strides = (self.stride, 1) if len(self.inner) == 1 else (1, self.stride, 1)
    y = x
    for i, (k, s, w) in enumerate(zip(kernels, strides, self.inner + (self.out,))):
      y = self.bn(self.conv(y, w, k, s, name=f'conv{i + 1}'), train, name=f'bn{i + 1}')
      if i < len(self.inner):
        y = gated(self, nn.relu(y), gates, f'{self.name}/conv{i + 1}')
    if x.shape[-1] != self.out or self.stride != 1:
      x = self.bn(self.conv(x, self.out, 1, self.stride, name='shortcut'), train,
                  name='shortcut_bn')
    return nn.relu(x + y)


class ResNet(ConvBNModule):
  spec: spec_lib.ResNetSpec = None
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, train=False, gates=None):
    check_gates(self.spec, gates)
    x = self.conv(x.astype(self.dtype), self.spec.stem, 7, 2, name='stem')
    x = nn.relu(self.bn(x, train, name='stem_bn'))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name, _, inner, out, stride in self.spec.blocks():
      x = ResNetBlock(self.dtype, inner, out, stride, name=name)(x, train, gates)
    return _head(x, self.num_classes, self.dtype, torch_bias=True)


_MODELS = {'wrn': WRN, 'densenet_bc': DenseNetBC, 'resnet': ResNet}


def build(spec: spec_lib.Spec, num_classes: int = 10, dtype=jnp.float32) -> nn.Module:
  """The linen module for `spec`; `dtype` is the compute dtype (parameters stay float32). A
  family registered elsewhere (`spec.register_family`) builds its own (`spec.build`)."""
  if spec.family not in _MODELS and hasattr(spec, 'build'):
    return spec.build(num_classes, dtype)
  if spec.family not in _MODELS:
    raise ValueError(f'unknown model family {spec.family!r}; expected one of {sorted(_MODELS)}')
  return _MODELS[spec.family](dtype=jnp.dtype(dtype), spec=spec, num_classes=num_classes)


def variables(model: nn.Module, key, image_shape) -> dict:
  """Variables ({'params', 'batch_stats'}) for NHWC images of `image_shape` (H, W, C), traced
  into the caller's program (inside jit or eval_shape)."""
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))


def init(model: nn.Module, key, image_shape) -> dict:
  """`variables`, compiled as a program of its own (`parallel.jit_once`)."""
  return parallel.jit_once(functools.partial(variables, model, image_shape=image_shape))(key)


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
