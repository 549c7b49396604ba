"""jaxbud.graph.fisher: the generic Fisher saliency equals the hand-gated one on jaxbud's own
networks; its gates sit where channels are consumed, so zeroing a gate removes the channel;
the step's loss and gradients are the plain ones; errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbud.graph as jg
from jaxbud import models
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import train
from jaxbud.errors import UsageError
from jaxbud.graph import saliency
from tests import fast_compile
from tests import graph_check
from tests import test_graph_zoo as zoo

SPECS = [
    (spec_lib.wrn(10, 1, in_channels=1), (8, 8, 1)),
    (spec_lib.densenet_bc(16, 4), (8, 8, 3)),
    (spec_lib.resnet(18).with_prunable([3] * 8), (16, 16, 3)),
]
LABELS = jnp.array([0, 3, 5, 9])


def loss_fn(apply, batch):
  logits, _ = apply(batch[0], train=True, mutable=['batch_stats'])
  return train.cross_entropy(logits, batch[1]).mean()


def _setup(spec, shape):
  model = models.build(spec, 10)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, *shape)), jnp.float32)
  return model, x, graph_check.noisy_variables(model, x)


@pytest.mark.parametrize('spec, shape', SPECS, ids=['wrn', 'densenet_bc', 'resnet18'])
def test_fisher_equals_the_hand_gated_saliency(spec, shape):
  """Today's saliency: `train.make_update` with per-example `models.apply_gate` gates (the prune
  step's backward pass), reduced by `prune.ACCUMULATORS['fisher']`."""
  model, x, variables = _setup(spec, shape)
  tx = optax.sgd(0.1)
  state = train.TrainState(jnp.zeros((), jnp.int32), variables['params'],
                           variables['batch_stats'], tx.init(variables['params']),
                           train.data_rng(0))
  gates = {n: jnp.ones((4, w)) for n, w in zip(spec.prunable_names, spec.prunable)}
  _, _, gate_grads = fast_compile.run(
      lambda s, g: train.make_update(model, tx)(s, x, LABELS, g), state, gates)
  got = fast_compile.run(lambda v: jg.fisher(model.apply, v, (x, LABELS), loss_fn), variables)
  for name in spec.prunable_names:
    want = np.asarray(prune.ACCUMULATORS['fisher'](gate_grads[name], None))
    assert want.max() > 1e-5  # a real signal, not gates cancelled by a batch norm
    np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-5 * want.max())
  # The streams and concatenated segments the hand plan leaves alone are scored too.
  assert set(got) == {g.name for g in jg.analyze(model.apply, variables, x).prunable}


def _sites(model, x, **kwargs):
  """{group name: sorted module paths of the equations gating it}."""
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  call = saliency._Call(model.apply, variables, (x,), kwargs, None)  # pylint: disable=protected-access
  eqns = {}
  _index(call.traced.closed.jaxpr, '', eqns)
  out = {}
  for site, operands in call.sites.items():
    for _, _, gated in operands:
      for _, name, _ in gated:
        out.setdefault(name, set()).add(str(eqns[site].source_info.name_stack))
  return {k: sorted(v) for k, v in out.items()}


def _index(jaxpr, prefix, out):
  from jaxbud.graph import rules  # pylint: disable=g-import-not-at-top
  for i, eqn in enumerate(jaxpr.eqns):
    out[f'{prefix}{i}'] = eqn
    key = rules.CALLS.get(eqn.primitive.name, '')
    callee = eqn.params.get(key) if key else None
    if callee is not None:
      _index(getattr(callee, 'jaxpr', callee), f'{prefix}{i}/', out)


def test_gates_sit_where_channels_are_consumed():
  x = zoo.X
  # A stream is gated at every consumer (the block's conv1 and the shortcut); the block's
  # output stream at the classifier.
  sites = _sites(zoo.TorchResNet(), x, train=True, mutable=['batch_stats'])
  assert sites == {'stem': ['TorchResNet/conv1', 'TorchResNet/shortcut'],
                   'conv1': ['TorchResNet/conv2'], 'conv2': ['TorchResNet/head']}
  # A depthwise conv passes its channels on: they are gated at the projection, never between
  # the depthwise conv and its batch norm. The residual stream reaches b1_expand and b0_expand.
  sites = _sites(zoo.MobileNetV2(), x, train=True, mutable=['batch_stats'])
  assert sites['b0_expand'] == ['MobileNetV2/b0_project']
  assert sites['b1_expand'] == ['MobileNetV2/b1_project']
  assert sites['stem'] == ['MobileNetV2/b0_expand', 'MobileNetV2/b1_expand']
  # Concatenated segments: each is gated wherever the concatenation is consumed.
  sites = _sites(zoo.DenseBlock(), x)
  assert sites['stem'] == ['DenseBlock/head', 'DenseBlock/l0_conv1', 'DenseBlock/l1_conv1']
  assert sites['l0_conv2'] == ['DenseBlock/head', 'DenseBlock/l1_conv1']
  # A flatten into a dense layer: the channel is gated as the minor factor of the flat axis.
  assert _sites(zoo.VGG(), x)['conv2'] == ['VGG/fc']


@pytest.mark.parametrize('name', ['torch_resnet', 'densenet_block', 'mobilenet_v2', 'reused'])
def test_a_zero_gate_removes_the_channel(name):
  """Gates at zero for a random keep set give the masked network's logits (train mode): every
  path from a channel to the loss passes through a gate, so the gradient is that of removing
  it."""
  model, _ = zoo.ZOO[name]
  x = zoo.X
  variables = graph_check.noisy_variables(model, x)
  kwargs = {'train': True, 'mutable': ['batch_stats']}
  call = saliency._Call(model.apply, variables, (x,), kwargs, None)  # pylint: disable=protected-access
  keep = graph_check.random_keep(call.groups, 1)
  gates = {n: jnp.zeros(s).at[:, keep[n]].set(1.0) for n, s in call.gate_shapes().items()}
  masked = jax.tree.map(jnp.multiply, variables, jg.masks(call.groups, keep))
  got = fast_compile.run(lambda v, g: call(v, (x,), kwargs, g)[0], variables, gates)
  want = fast_compile.run(lambda v: model.apply(v, x, **kwargs)[0], masked)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert np.abs(want - fast_compile.run(lambda v: model.apply(v, x, **kwargs)[0],
                                        variables)).max() > 1e-3  # removal changed something


def test_fisher_step_returns_the_plain_loss_and_gradients():
  model, _ = zoo.ZOO['mobilenet_v2']
  x = zoo.X
  variables = graph_check.noisy_variables(model, x)
  labels = jnp.array([1, 0, 4])

  def loss_with_aux(apply, batch):
    logits, updates = apply(batch['image'], train=True, mutable=['batch_stats'])
    return train.cross_entropy(logits, batch['label']).mean(), updates

  step = jg.fisher_step(model.apply, loss_with_aux, has_aux=True)
  (loss, updates), grads, fisher = fast_compile.run(step, variables,
                                                    {'image': x, 'label': labels})

  def plain(v):
    logits, upd = model.apply(v, x, train=True, mutable=['batch_stats'])
    return train.cross_entropy(logits, labels).mean(), upd

  (want_loss, want_updates), want_grads = fast_compile.run(
      jax.value_and_grad(plain, has_aux=True), variables)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
               (grads, updates), (want_grads, want_updates))
  groups = jg.analyze(model.apply, variables, x)
  assert set(fisher) == {g.name for g in groups.prunable}
  assert all(fisher[g.name].shape == (g.size,) for g in groups.prunable)
  # `groups` restricts the scores to some groups.
  some = fast_compile.run(lambda v: jg.fisher(model.apply, v, {'image': x, 'label': labels},
                                              loss_with_aux, ['b0_expand'], has_aux=True),
                         variables)
  assert list(some) == ['b0_expand']
  np.testing.assert_allclose(some['b0_expand'], fisher['b0_expand'], rtol=1e-5)


def test_fisher_errors_say_what_is_wrong():
  model, _ = zoo.ZOO['torch_resnet']
  x = zoo.X
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  twice = lambda apply, b: apply(b).sum() + apply(b).sum()
  with pytest.raises(UsageError, match='loss_fn called the model more than once'):
    jax.eval_shape(lambda v: jg.fisher(model.apply, v, x, twice), variables)
  with pytest.raises(UsageError, match='loss_fn never called the model'):
    jax.eval_shape(lambda v: jg.fisher(model.apply, v, x, lambda apply, b: b.sum()), variables)
  with pytest.raises(UsageError, match="group 'head' is frozen"):
    jax.eval_shape(lambda v: jg.fisher(model.apply, v, x, lambda apply, b: apply(b).sum(),
                                       groups=['head']), variables)
  with pytest.raises(UsageError, match="groups names 'conv9'"):
    jax.eval_shape(lambda v: jg.fisher(model.apply, v, x, lambda apply, b: apply(b).sum(),
                                       groups=['conv9']), variables)
  with pytest.raises(UsageError, match='for an nnx module pass'):
    jg.fisher_step(zoo.nnx.eval_shape(lambda: zoo.NnxCNN(zoo.nnx.Rngs(0))), lambda a, b: 0.)
  with pytest.raises(UsageError, match='no channel group of this model can be pruned'):
    frozen = zoo.X[..., :1]
    m = __import__('tests.test_graph', fromlist=['_Frozen'])._Frozen()
    v = jax.eval_shape(m.init, jax.random.key(0), frozen)
    jax.eval_shape(lambda v: jg.fisher(m.apply, v, frozen, lambda apply, b: apply(b).sum()), v)
  # A group only parameters meet (a low-rank kernel a @ b) has no gate; a zero score would rank
  # it first.
  low_rank = _LowRank()
  v = jax.eval_shape(low_rank.init, jax.random.key(0), x)
  assert [g.name for g in jg.analyze(low_rank.apply, v, x).prunable] == ['params/a:1']
  with pytest.raises(UsageError, match=r"consumes group\(s\) \['params/a:1'\] beside"):
    jax.eval_shape(lambda v: jg.fisher(low_rank.apply, v, x, lambda apply, b: apply(b).sum()),
                   v)


class _LowRank(zoo.nn.Module):
  """A dense layer whose kernel is the product of two parameters (rank 4)."""

  @zoo.nn.compact
  def __call__(self, x):
    a = self.param('a', zoo.nn.initializers.lecun_normal(), (x[0].size, 4))
    b = self.param('b', zoo.nn.initializers.lecun_normal(), (4, 10))
    return x.reshape(x.shape[0], -1) @ (a @ b)


@pytest.mark.parametrize('masked', [False, True])
def test_the_generic_prune_step_is_the_hand_gated_one(masked):
  """graph.step.make_prune_step against prune.make_prune_step on WRN-10-1 for three steps (same
  crops, flips, SGD update): the same parameters and the same accumulated sums of every
  gradient statistic (fisher, grad, grad_sq, grad_abs). With channels masked (the hand step
  gates them, the generic one zeroes every variable position that holds them, `expand_masks`),
  the same losses, statistics and parameters outside the masked positions."""
  from jaxbud import data  # pylint: disable=g-import-not-at-top
  from jaxbud.graph import step as graph_step  # pylint: disable=g-import-not-at-top
  spec = spec_lib.wrn(10, 1, in_channels=1)
  model = models.build(spec, 10)
  ds = data.synthetic(train_size=8, test_size=1, image_size=8, channels=1)
  tx = optax.sgd(0.05, momentum=0.9)
  state = train.create_state(model, tx, jax.random.key(0), (8, 8, 1))
  groups = jg.analyze(model.apply, {'params': state.params, 'batch_stats': state.batch_stats},
                      jnp.zeros((4, 8, 8, 1)), train=True, mutable=['batch_stats'])
  hand_groups = [g for g in groups.prunable if g.name in spec.prunable_names]
  accs = ('fisher', 'grad', 'grad_sq', 'grad_abs')
  hand = jax.jit(prune.make_prune_step(model, tx, ds, crop_pad=1, flip=True, accumulators=accs))
  generic = jax.jit(graph_step.make_prune_step(model.apply, tx, ds, crop_pad=1, flip=True,
                                               groups=groups,
                                               scored=[g.name for g in hand_groups],
                                               accumulators=accs))
  a = prune.init_prune_state(state, spec, accs)
  if masked:  # two channels of one layer, one of another
    first, second = spec.prunable_names[:2]
    a = a.replace(mask={**a.mask, first: a.mask[first].at[jnp.array([0, 5])].set(0.0),
                        second: a.mask[second].at[3].set(0.0)})
  # Masks by group, as a prune run holds them (all ones: multiplying by them changes nothing).
  b = graph_step.init_state(state, hand_groups, mask=a.mask, accumulators=accs)
  keep = graph_step.expand_masks(groups, a.mask)['params']
  for i in range(3):
    batch = {'image': ds.train_images[4 * (i % 2):4 * (i % 2) + 4],
             'label': jnp.asarray(ds.train_labels[4 * (i % 2):4 * (i % 2) + 4])}
    a, ma = hand(a, batch)
    b, mb = generic(b, batch)
    np.testing.assert_allclose(mb['train_loss'], ma['train_loss'], rtol=1e-5)
  for x, y, m in zip(jax.tree.leaves(b.train.params), jax.tree.leaves(a.train.params),
                     jax.tree.leaves(keep)):
    np.testing.assert_allclose(x, y * m, rtol=1e-4, atol=1e-6)
    assert not np.any(np.asarray(x)[np.broadcast_to(m, x.shape) == 0])
  for acc in accs:
    for name in spec.prunable_names:
      want = a.stats[acc][name]
      np.testing.assert_allclose(b.stats[acc][name], want, rtol=1e-4,
                                 atol=1e-6 * float(np.max(np.abs(want))), err_msg=acc)
  with pytest.raises(UsageError, match='activation accumulator'):
    graph_step.init_state(state, hand_groups, accumulators=('activation',))
