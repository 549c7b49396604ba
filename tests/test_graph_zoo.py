"""A zoo of small Flax CNNs defined here, none of them known to jaxbud: for random keep sets,
the network compacted by jaxbud.graph (variables sliced, a smaller module from a factory) gives
the masked network's logits and batch statistics, in eval and in train mode."""
import functools

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbud.graph as jg
from jaxbud.errors import UsageError
from jaxbud.graph import nnx_module as jg_nnx
from tests import fast_compile
from tests import graph_check

BN = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


def bn(train, name):
  return BN(use_running_average=not train, name=name)


def conv(features, kernel=3, stride=1, name=None, groups=1, bias=False):
  return nn.Conv(features, (kernel, kernel), strides=stride, padding='SAME', use_bias=bias,
                 feature_group_count=groups, name=name)


def head(x, num_classes=5):
  return nn.Dense(num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


class TorchResNet(nn.Module):
  """torchvision-style: post-activation basic block with a projection shortcut."""
  stem: int = 6
  inner: int = 5
  out: int = 7

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(bn(train, 'stem_bn')(conv(self.stem, name='stem')(x)))
    y = nn.relu(bn(train, 'bn1')(conv(self.inner, stride=2, name='conv1')(x)))
    y = bn(train, 'bn2')(conv(self.out, name='conv2')(y))
    s = bn(train, 'shortcut_bn')(conv(self.out, 1, 2, name='shortcut')(x))
    return head(nn.relu(y + s))


class DenseBlock(nn.Module):
  """Two bottleneck dense layers: the features grow by concatenation."""
  stem: int = 6
  b0: int = 5
  g0: int = 3
  b1: int = 4
  g1: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = conv(self.stem, name='stem')(x)
    for i, (b, g) in enumerate(((self.b0, self.g0), (self.b1, self.g1))):
      y = nn.relu(bn(train, f'l{i}_bn1')(x))
      y = nn.relu(bn(train, f'l{i}_bn2')(conv(b, 1, name=f'l{i}_conv1')(y)))
      x = jnp.concatenate([x, conv(g, name=f'l{i}_conv2')(y)], axis=-1)
    return head(nn.relu(bn(train, 'bn')(x)))


class MobileNetV2(nn.Module):
  """Inverted residuals: expand 1x1, depthwise 3x3, project 1x1; a residual without projection
  where shapes allow."""
  stem: int = 6
  e1: int = 8
  e2: int = 9
  out2: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu6(bn(train, 'stem_bn')(conv(self.stem, stride=1, name='stem')(x)))
    for i, (e, out, stride) in enumerate(((self.e1, self.stem, 1), (self.e2, self.out2, 2))):
      y = nn.relu6(bn(train, f'b{i}_bn1')(conv(e, 1, name=f'b{i}_expand')(x)))
      y = nn.relu6(bn(train, f'b{i}_bn2')(conv(e, 3, stride, name=f'b{i}_dw', groups=e)(y)))
      y = bn(train, f'b{i}_bn3')(conv(out, 1, name=f'b{i}_project')(y))
      x = x + y if stride == 1 and out == x.shape[-1] else y
    return head(x)


class ResNeXt(nn.Module):
  """A bottleneck with a grouped 3x3 conv (`groups` groups of `per_in` -> `per_out` channels)
  and an identity shortcut."""
  stem: int = 6
  groups: int = 3
  per_in: int = 2
  per_out: int = 2

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(bn(train, 'stem_bn')(conv(self.stem, name='stem')(x)))
    y = nn.relu(bn(train, 'bn1')(conv(self.groups * self.per_in, 1, name='conv1')(x)))
    y = nn.relu(bn(train, 'bn2')(conv(self.groups * self.per_out, 3, name='conv2',
                                      groups=self.groups)(y)))
    y = bn(train, 'bn3')(conv(x.shape[-1], 1, name='conv3')(y))
    return head(nn.relu(x + y))


class VGG(nn.Module):
  """Convs, max pooling, then a flatten into dense layers (NHWC: the channel is the minor
  factor of the flattened axis)."""
  c1: int = 4
  c2: int = 5
  fc: int = 7

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(bn(train, 'bn1')(conv(self.c1, name='conv1')(x)))
    x = nn.relu(conv(self.c2, name='conv2', bias=True)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.fc, name='fc')(x))
    return nn.Dense(5, name='head')(x)


class GroupNormCNN(nn.Module):
  """GroupNorm normalises over (H, W, channels of a group): the per-group factor of its axis is
  reduced over and frozen; whole groups can go."""
  groups: int = 3
  per_group: int = 2
  c2: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    x = conv(self.groups * self.per_group, name='conv1')(x)
    x = nn.relu(nn.GroupNorm(num_groups=self.groups, name='gn')(x))
    x = nn.relu(conv(self.c2, name='conv2', bias=True)(x))
    return head(x)


class Reused(nn.Module):
  """One conv applied twice (shared weights): its input and output channels are one group."""
  width: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(bn(train, 'stem_bn')(conv(self.width, name='stem')(x)))
    shared = conv(self.width, name='shared', bias=True)
    x = nn.relu(shared(nn.relu(shared(x))))
    return head(x)


ZOO = {
    'torch_resnet': (TorchResNet(), lambda w: TorchResNet(
        w['stem'], w['conv1'], w['conv2'])),
    'densenet_block': (DenseBlock(), lambda w: DenseBlock(
        w['stem'], w['l0_conv1'], w['l0_conv2'], w['l1_conv1'], w['l1_conv2'])),
    'mobilenet_v2': (MobileNetV2(), lambda w: MobileNetV2(
        w['stem'], w['b0_expand'], w['b1_expand'], w['b1_project'])),
    'resnext': (ResNeXt(), lambda w: ResNeXt(
        w['stem'], w['conv1(factor 1 of 2)'], w['conv1(factor 2 of 2)'],
        w['conv2(factor 2 of 2)'])),
    'vgg': (VGG(), lambda w: VGG(w['conv1'], w['conv2'], w['fc'])),
    'groupnorm': (GroupNormCNN(), lambda w: GroupNormCNN(
        w['conv1(factor 1 of 2)'], c2=w['conv2'])),
    'reused': (Reused(), lambda w: Reused(w['stem'])),
}


@pytest.mark.parametrize('name', sorted(ZOO))
def test_compacted_network_gives_the_masked_networks_outputs(name):
  model, factory = ZOO[name]
  x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 8, 8, 2)), jnp.float32)
  variables = graph_check.noisy_variables(model, x)
  groups = graph_check.check_compaction(model, variables, x, factory)
  print(groups)


# Regressions: the failures DepGraph's users report (VainF/Torch-Pruning issue numbers). ---------

class BroadcastMask(nn.Module):
  """#510: mask[B,H,W,1] * x in two branches must not couple them."""
  a: int = 4
  b: int = 3
  out: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    m = nn.sigmoid(conv(1, name='mask')(x))
    ya = conv(self.out, name='conv_c')(nn.relu(conv(self.a, name='conv_a')(x)) * m)
    yb = conv(self.out, name='conv_d')(nn.relu(conv(self.b, name='conv_b')(x)) * m)
    return head(ya + yb)


class OneChannel(nn.Module):
  """#179: a conv with one output channel is no depthwise conv."""
  c1: int = 4
  c3: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(conv(self.c1, name='conv1')(x))
    x = nn.relu(conv(1, name='one', bias=True)(x))
    return head(nn.relu(conv(self.c3, name='conv3')(x)))


class DepthwiseResidual(nn.Module):
  """#513: a depthwise conv inside a residual couples its input and output with the stream."""
  width: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(bn(train, 'stem_bn')(conv(self.width, name='stem')(x)))
    y = bn(train, 'dw_bn')(conv(self.width, 3, name='dw', groups=self.width)(x))
    return head(nn.relu(x + y))


class ConcatSplit(nn.Module):
  """#147, #415: a concatenation split again, at `cut` channels from the start."""
  a: int = 4
  b: int = 4
  cut: int = 4
  out: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    c = jnp.concatenate([conv(self.a, name='conv_a')(x), conv(self.b, name='conv_b')(x)], -1)
    p, q = jnp.split(c, [self.cut], axis=-1)
    return head(conv(self.out, name='conv_p')(p) + conv(self.out, name='conv_q')(q))


_act = jax.jit(lambda h: nn.relu(h) * 2.0)


class TwinCalls(nn.Module):
  """One jitted helper called on two branches: JAX reuses one Jaxpr for both calls."""
  a: int = 4
  b: int = 4
  out: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    ya = conv(self.out, name='conv_c')(_act(conv(self.a, name='conv_a')(x)))
    yb = conv(self.out, name='conv_d')(_act(conv(self.b, name='conv_b')(x)))
    return head(ya + yb)


class Unsupported(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    h = jnp.sort(conv(4, name='conv_a')(x), axis=1)  # a primitive with no channel rule
    return head(conv(3, name='conv_b')(h))


def _groups(model, x):
  return jg.analyze(model.apply, jax.eval_shape(model.init, jax.random.key(0), x), x)


X = jnp.asarray(np.random.default_rng(8).standard_normal((3, 8, 8, 2)), jnp.float32)


def _compaction(model, factory):
  return graph_check.check_compaction(model, graph_check.noisy_variables(model, X), X, factory,
                                      train=False)


def test_a_broadcast_mask_multiply_does_not_couple_the_branches():
  groups = _compaction(BroadcastMask(), lambda w: BroadcastMask(w['conv_a'], w['conv_b'],
                                                                    w['conv_c']))
  assert groups['conv_a'].size == 4 and groups['conv_b'].size == 3
  assert {e.leaf for e in groups['conv_a'].entries} == {'params/conv_a/kernel',
                                                       'params/conv_c/kernel'}
  assert 'broadcast by mul' in groups['mask'].frozen_by[0]  # its one channel cannot go


def test_pool_then_flatten_then_dense_takes_the_channel_as_the_minor_factor():
  groups = _groups(VGG(), X)
  (fc,) = [e for e in groups['conv2'].entries if e.leaf == 'params/fc/kernel']
  assert fc.axis == 0 and fc.part == '(factor 3 of 3)'
  np.testing.assert_array_equal(fc.index, np.arange(4 * 4 * 5) % 5)  # 8x8 pooled to 4x4


def test_a_conv_with_one_output_channel_is_not_depthwise():
  groups = _compaction(OneChannel(), lambda w: OneChannel(w['conv1'], w['conv3']))
  assert [(g.name, g.size) for g in groups.prunable] == [('conv1', 4), ('one', 1), ('conv3', 4)]
  assert {e.leaf for e in groups['conv1'].entries} == {'params/conv1/kernel',
                                                      'params/one/kernel'}


def test_a_depthwise_conv_inside_a_residual_joins_the_stream():
  groups = _compaction(DepthwiseResidual(), lambda w: DepthwiseResidual(w['stem']))
  assert ('params/dw/kernel', 3) in {(e.leaf, e.axis) for e in groups['stem'].entries}
  assert not groups['params/dw/kernel:2'].prunable


def test_a_concatenation_split_on_its_boundary_is_exact():
  groups = _compaction(ConcatSplit(), lambda w: ConcatSplit(w['conv_a'], w['conv_b'],
                                                            w['conv_a'], w['conv_p']))
  assert groups['conv_a'].prunable and groups['conv_b'].prunable


def test_a_concatenation_split_off_its_boundary_freezes_the_cut_segment():
  groups = _groups(ConcatSplit(cut=6), X)
  assert groups['conv_a'].prunable
  cut = [g for g in groups if ('params/conv_b/kernel', 3) in {(e.leaf, e.axis) for e in g.entries}]
  assert [g.name for g in cut] == ['conv_b[0:2]', 'conv_b[2:4]']
  assert [g.size for g in cut] == [2, 2]
  for g in cut:
    assert 'sliced off a concatenation segment boundary by split' in g.frozen_by[0]


def test_two_calls_of_one_jaxpr_are_not_merged():
  model = TwinCalls()
  variables = jax.eval_shape(model.init, jax.random.key(0), X)
  jaxpr = jax.make_jaxpr(model.apply)(variables, X).jaxpr
  calls = [e.params['jaxpr'] for e in jaxpr.eqns if e.primitive.name in ('jit', 'pjit')]
  assert len(calls) == 2 and calls[0] is calls[1]  # the trap is really there
  groups = _compaction(model, lambda w: TwinCalls(w['conv_a'], w['conv_b'], w['conv_c']))
  assert groups['conv_a'] is not groups['conv_b']
  assert groups['conv_a'].size == groups['conv_b'].size == 4


def test_an_unsupported_primitive_freezes_the_channel_and_names_itself():
  groups = _groups(Unsupported(), X)
  assert groups['conv_a'].frozen_by[0].startswith('no channel rule for sort at Unsupported')
  assert groups['conv_b'].prunable


def _summary(groups):
  return [(g.name, g.size, g.frozen_by, [(e.leaf, e.axis, e.part) for e in g.entries])
          for g in groups]


def test_remat_and_jit_are_inlined():
  model = TorchResNet()
  variables = jax.eval_shape(model.init, jax.random.key(0), X)
  plain = _summary(jg.analyze(model.apply, variables, X))
  for wrap in (jax.checkpoint, jax.jit, lambda f: jax.jit(jax.checkpoint(f))):
    got = _summary(jg.analyze(wrap(model.apply), variables, X))
    assert [g[:2] + g[3:] for g in got] == [g[:2] + g[3:] for g in plain]
  # A model that remats its block inside: the same groups as without.
  remat = nn.remat(TorchResNet)()
  names = [e.primitive.name for e in jax.make_jaxpr(remat.apply)(variables, X).jaxpr.eqns]
  assert names == ['remat2']  # jax.checkpoint's primitive
  assert _summary(jg.analyze(remat.apply, variables, X))[2:4] == plain[2:4]


class Constant(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    scale = np.linspace(0.5, 1.5, 4, dtype=np.float32)  # a per-channel constant
    return head(conv(3, name='conv_b')(conv(4, name='conv_a')(x) * scale))


def test_a_captured_constant_on_a_channel_axis_freezes_it():
  groups = _groups(Constant(), X)
  assert groups['conv_a'].frozen_by == ('a constant captured by the model',)
  assert groups['conv_b'].prunable


# flax.nnx ----------------------------------------------------------------------------------------

class NnxCNN(nnx.Module):
  """A residual nnx CNN: stem, a block (conv, BN, relu, conv, BN) added to the stream, head."""

  def __init__(self, rngs, stem=6, inner=5):
    conv = functools.partial(nnx.Conv, kernel_size=(3, 3), padding='SAME', use_bias=False,
                             rngs=rngs)
    self.stem = conv(2, stem)
    self.stem_bn = nnx.BatchNorm(stem, momentum=0.9, rngs=rngs)
    self.conv1 = conv(stem, inner)
    self.bn1 = nnx.BatchNorm(inner, momentum=0.9, rngs=rngs)
    self.conv2 = conv(inner, stem)
    self.bn2 = nnx.BatchNorm(stem, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(stem, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem_bn(self.stem(x)))
    y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
    return self.head(jnp.mean(nnx.relu(x + y), axis=(1, 2)))


def _noisy_nnx(module, seed):
  """Every Param and BatchStat redrawn as in graph_check.noisy_variables."""
  _, variables = jg_nnx.functional(module)
  rng = np.random.default_rng(seed)
  noisy = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.asarray(
          (float(jax.tree_util.keystr(p).endswith(("'scale']", "'var']"))) +
           0.5 * rng.uniform(-1, 1, v.shape) / np.sqrt(max(np.prod(v.shape[:-1]), 1))
           ).astype(np.float32)), variables)
  return jg_nnx.update(module, noisy)


@pytest.mark.parametrize('train', [False, True])
def test_an_nnx_module_compacted_in_place_gives_the_masked_modules_outputs(train):
  module = _noisy_nnx(nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0))), 3)
  module.train() if train else module.eval()
  groups = jg.analyze(module, X)
  assert [(g.name, g.size) for g in groups.prunable] == [('stem', 6), ('conv1', 5)]
  assert {e.leaf for e in groups['stem'].entries} >= {
      'params/stem/kernel', 'batch_stats/stem_bn/mean', 'params/conv2/kernel',
      'batch_stats/bn2/var', 'params/head/kernel'}
  for seed in (0, 1):
    keep = graph_check.random_keep(groups, seed)
    masked = nnx.clone(module)
    _, variables = jg_nnx.functional(masked)
    jg_nnx.update(masked, jax.tree.map(jnp.multiply, variables, jg.masks(groups, keep)))
    small = jg.compact(groups, nnx.clone(module), keep)
    assert small.widths == {'stem': len(keep['stem']), 'conv1': len(keep['conv1']),
                            'params/stem/kernel:2': 2, 'head': 5}
    assert small.module.conv1.kernel[...].shape == (3, 3, len(keep['stem']), len(keep['conv1']))
    # Run through the functional form of the (updated) modules, jitted: logits and statistics.
    got = fast_compile.run(lambda v: jg_nnx.functional(small.module)[0](v, X),
                           jg_nnx.functional(small.module)[1])
    want = fast_compile.run(lambda v: jg_nnx.functional(masked)[0](v, X),
                            jg_nnx.functional(masked)[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    small_stats = jg.compact(groups, {'params': variables['params'], **want[1]}, keep)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 got[1]['batch_stats'], small_stats.variables['batch_stats'])
    if train:  # the statistics moved: the comparison above compared something
      assert np.abs(want[1]['batch_stats']['bn1']['mean'] -
                    variables['batch_stats']['bn1']['mean']).max() > 1e-3


def test_an_nnx_modules_optimizer_state_is_sliced_and_fisher_scores_its_groups():
  import optax  # pylint: disable=g-import-not-at-top
  module = _noisy_nnx(nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0))), 4)
  groups = jg.analyze(module, X)
  opt_state = optax.sgd(0.1, momentum=0.9).init(nnx.state(module, nnx.Param))
  keep = {'conv1': np.array([1, 3])}
  small = jg.compact(groups, module, keep, opt_state=opt_state)
  assert small.module is module and module.conv1.kernel[...].shape == (3, 3, 6, 2)
  assert small.opt_state[0].trace['conv1']['kernel'][...].shape == (3, 3, 6, 2)
  assert small.opt_state[0].trace['conv2']['kernel'][...].shape == (3, 3, 2, 6)
  assert small.opt_state[0].trace['bn1']['scale'][...].shape == (2,)
  # Fisher through the functional form: apply returns (logits, {'batch_stats': ...}).
  apply_fn, variables = jg_nnx.functional(module)
  labels = jnp.array([0, 1, 2])
  scores = fast_compile.run(lambda v: jg.fisher(
      apply_fn, v, X, lambda apply, x: optax.softmax_cross_entropy_with_integer_labels(
          apply(x)[0], labels).mean()),
                            variables)
  assert {k: v.shape for k, v in scores.items()} == {'stem': (6,), 'conv1': (2,)}
  assert all(float(v.min()) > 0 for v in scores.values())


# The compacted program (linen without a factory) -----------------------------------------------

class ConcatSlice(nn.Module):
  """A concatenation sliced back on its boundary with x[..., a:b] (`slice`, whose offsets move
  when the first segment shrinks)."""
  a: int = 4
  b: int = 5
  out: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    c = nn.relu(jnp.concatenate([conv(self.a, name='conv_a')(x), conv(self.b, name='conv_b')(x)],
                                -1))
    p, q = c[..., :self.a], c[..., self.a:]
    return head(conv(self.out, name='conv_p')(p) * conv(self.out, name='conv_q')(q))


def _wrn():
  from jaxbud import models  # pylint: disable=g-import-not-at-top
  from jaxbud import spec as spec_lib  # pylint: disable=g-import-not-at-top
  return models.build(spec_lib.wrn(10, 1, in_channels=2), 5)


PROGRAMS = {  # model, train mode
    'mobilenet_v2': (lambda: ZOO['mobilenet_v2'][0], True),   # depthwise: feature_group_count
    'resnext': (lambda: ZOO['resnext'][0], False),            # grouped: whole groups can go
    'vgg': (lambda: ZOO['vgg'][0], False),                    # flatten: reshape new_sizes
    'concat_slice': (ConcatSlice, False),                     # slice offsets
    'jaxbud_wrn': (_wrn, True),                               # custom-VJP batch norm inlined
}


@pytest.mark.parametrize('name', sorted(PROGRAMS))
def test_the_compacted_program_gives_the_masked_networks_outputs(name):
  make, train = PROGRAMS[name]
  model = make()
  variables = graph_check.noisy_variables(model, X)
  kwargs = {'train': True} if train else {}
  if train and 'batch_stats' in variables:
    kwargs['mutable'] = ['batch_stats']
  groups = jg.analyze(model.apply, variables, X, **kwargs)
  keep = graph_check.random_keep(groups, 2)
  masked = jax.tree.map(jnp.multiply, variables, jg.masks(groups, keep))
  small = jg.compact(groups, variables, keep)
  assert small.module is None and small.apply is not None
  got = fast_compile.run(lambda v: small.apply(v, X, **kwargs), small.variables)
  want = fast_compile.run(lambda v: model.apply(v, X, **kwargs), masked)
  if 'mutable' in kwargs:
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    updated = {**masked, 'batch_stats': want[1]['batch_stats']}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 got[1]['batch_stats'], jg.compact(groups, updated, keep).variables['batch_stats'])
  else:
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Something was removed: the program really ran at smaller shapes.
  assert sum(np.size(v) for v in jax.tree.leaves(small.variables)) < sum(
      np.size(v) for v in jax.tree.leaves(variables))


def test_the_compacted_program_runs_the_analysed_call_only():
  model = ZOO['torch_resnet'][0]
  variables = jax.eval_shape(model.init, jax.random.key(0), X)
  groups = jg.analyze(model.apply, variables, X)
  small = jg.compact(groups, jax.tree.map(jnp.zeros_like, variables), {'conv1': [0, 2]})
  with pytest.raises(UsageError, match='the compacted program runs the call that was analysed'):
    small.apply(small.variables, X, train=True)
