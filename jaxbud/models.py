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
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbud import spec as spec_lib

# N(0, sqrt(2 / (kh * kw * out_channels))): He initialisation with fan-out, untruncated.
he_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class ConvBNConfig(nn.Module):
  """Shared conv/BN factory: explicit symmetric padding, the reference BN settings."""
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
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=self.dtype, name=name)(x)


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
  axes = (1, 2) if g.ndim == 2 else tuple(range(y.ndim - 1))
  s = jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32), axis=axes)
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


def check_gates(spec, gates):
  """Gate names must be prunable layers of `spec`: a typo would otherwise silently do nothing."""
  unknown = sorted(set(gates or {}) - set(spec.prunable_names))
  if unknown:
    raise ValueError(f'unknown gate name(s) {unknown}; gates are keyed by spec.prunable_names, '
                     f'e.g. {spec.prunable_names[0]!r}')


def _head(x, num_classes, dtype):
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(num_classes, bias_init=nn.initializers.zeros, dtype=dtype, name='head')(x)


class WRNBlock(ConvBNConfig):
  """Pre-activation block; the inner width (conv1 out = conv2 in) is the prunable one."""
  inner: int = 0
  out: int = 0
  stride: int = 1

  @nn.compact
  def __call__(self, x, train, gates=None):
    o = nn.relu(self.bn(x, train, name='bn1'))
    y = nn.relu(self.bn(self.conv(o, self.inner, 3, self.stride, name='conv1'), train, name='bn2'))
    y = self.conv(apply_gate(y, gates, f'{self.name}/conv1'), self.out, 3, name='conv2')
    if x.shape[-1] != self.out or self.stride != 1:
      x = self.conv(o, self.out, 1, self.stride, name='shortcut')
    return x + y


class WRN(ConvBNConfig):
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


class DenseLayer(ConvBNConfig):
  """Bottleneck dense layer; the bottleneck width (conv1 out) is the prunable one."""
  bottleneck: int = 0
  growth: int = 0

  @nn.compact
  def __call__(self, x, train, gates=None):
    y = nn.relu(self.bn(x, train, name='bn1'))
    y = nn.relu(self.bn(self.conv(y, self.bottleneck, 1, name='conv1'), train, name='bn2'))
    y = self.conv(apply_gate(y, gates, f'{self.name}/conv1'), self.growth, 3, name='conv2')
    return jnp.concatenate([x, y], axis=-1)


class Transition(ConvBNConfig):
  out: int = 0

  @nn.compact
  def __call__(self, x, train):
    x = self.conv(nn.relu(self.bn(x, train, name='bn')), self.out, 1, name='conv')
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetBC(ConvBNConfig):
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


class ResNetBlock(ConvBNConfig):
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
        y = apply_gate(nn.relu(y), gates, f'{self.name}/conv{i + 1}')
    if x.shape[-1] != self.out or self.stride != 1:
      x = self.bn(self.conv(x, self.out, 1, self.stride, name='shortcut'), train,
                  name='shortcut_bn')
    return nn.relu(x + y)


class ResNet(ConvBNConfig):
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
    return _head(x, self.num_classes, self.dtype)


_MODELS = {'wrn': WRN, 'densenet_bc': DenseNetBC, 'resnet': ResNet}


def build(spec: spec_lib.Spec, num_classes: int = 10, dtype=jnp.float32) -> nn.Module:
  """The linen module for `spec`; `dtype` is the compute dtype (parameters stay float32)."""
  if spec.family not in _MODELS:
    raise ValueError(f'unknown model family {spec.family!r}; expected one of {sorted(_MODELS)}')
  return _MODELS[spec.family](dtype=jnp.dtype(dtype), spec=spec, num_classes=num_classes)


def init(model: nn.Module, key, image_shape) -> dict:
  """Variables ({'params', 'batch_stats'}) for NHWC images of `image_shape` (H, W, C)."""
  return jax.jit(lambda k: model.init(k, jnp.zeros((1, *image_shape), jnp.float32)))(key)


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
