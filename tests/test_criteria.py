"""Saliency criteria and the statistics the prune step accumulates for them, each against a
direct computation on a small network (jaxbud.prune.ACCUMULATORS, jaxbud.criteria)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbud import criteria
from jaxbud import data as data_lib
from jaxbud import models
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import train
from tests import fast_compile
from tests.test_prune import activation_and_grad
from tests.test_prune import perturbed_state

SPEC = spec_lib.wrn(10, 1, in_channels=1)
NAME = 'block1/conv1'  # the second block's prunable layer (32 channels, 4x4)


def _digits(n=16):
  d = data_lib.digits()
  return data_lib.Dataset('digits', d.train_images[:n], d.train_labels[:n], d.test_images[:8],
                          d.test_labels[:8], 10, d.mean, d.std)


@pytest.fixture(scope='module')
def two_steps():
  """Two prune steps at lr 0 (the network does not move) on two batches of 8, every
  accumulator on, and each batch's preprocessed images."""
  ds = _digits()
  model, state = perturbed_state(SPEC, (8, 8, 1))
  tx = optax.sgd(0.0)
  state = state.replace(opt_state=tx.init(state.params))
  ps = prune.init_prune_state(state, SPEC, tuple(prune.ACCUMULATORS))
  step = prune.make_prune_step(model, tx, ds, crop_pad=0, flip=False,
                               accumulators=tuple(prune.ACCUMULATORS))
  preprocess = train.make_preprocess(ds, crop_pad=0, flip=False, dtype=jnp.float32)
  batches = [{'image': jnp.asarray(ds.train_images[i:i + 8]),
              'label': jnp.asarray(ds.train_labels[i:i + 8])} for i in (0, 8)]
  xs = [preprocess(ps.train.rng, i, b['image']) for i, b in enumerate(batches)]
  step = jax.jit(step)
  for b in batches:
    ps, _ = step(ps, b)
  return model, state, ps, batches, xs


def test_every_accumulator_equals_its_direct_computation(two_steps):
  model, state, ps, batches, xs = two_steps
  want = {k: 0.0 for k in prune.ACCUMULATORS}
  for x, b in zip(xs, batches):
    a, dl_da = activation_and_grad(model, state, x, b['label'], NAME,
                                   (8, 4, 4, SPEC.prunable[1]))
    g = jnp.sum(a * dl_da, axis=(1, 2))  # (N, C): per-example gradient wrt the channel gate
    want['fisher'] += 0.5 * jnp.mean(g ** 2, axis=0)
    want['grad'] += jnp.sum(g, axis=0)
    want['grad_sq'] += jnp.sum(g, axis=0) ** 2
    want['grad_abs'] += jnp.sum(jnp.abs(g), axis=0)
    want['activation'] += jnp.mean(a, axis=(0, 1, 2))
  for k, v in want.items():
    np.testing.assert_allclose(ps.stats[k][NAME], v, rtol=2e-4, atol=1e-12, err_msg=k)
    assert float(jnp.max(jnp.abs(v))) > 0, k


def test_taylor_is_the_squared_gradient_wrt_a_channel_scale_averaged_over_batches(two_steps):
  """Plain jax.grad of the loss with respect to a (C,) scale multiplied into the channels (no
  custom VJP, no per-example gates), squared per batch, then averaged."""
  model, state, ps, batches, xs = two_steps
  w = SPEC.prunable[1]

  def loss(scale, x, labels):
    orig = models.apply_gate
    models.apply_gate = lambda h, gates, n: h * scale if n == NAME else orig(h, gates, n)
    try:
      logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                              train=True, mutable=['batch_stats'])
    finally:
      models.apply_gate = orig
    return train.cross_entropy(logits, labels).mean()

  grads = [fast_compile.run(jax.grad(loss), jnp.ones((w,)), x, b['label'])
           for x, b in zip(xs, batches)]
  want = (grads[0] ** 2 + grads[1] ** 2) / 2
  ctx = criteria.Context(SPEC, state.params, None, jax.random.key(0),
                         stats=jax.device_get(ps.stats), steps=2)
  np.testing.assert_allclose(criteria.get('taylor').fn(ctx)[NAME], want, rtol=5e-4, atol=1e-14)
  assert criteria.get('taylor').needs == ('grad_sq',)


def test_bn_scale_is_the_absolute_scale_of_the_batch_norm_of_each_channel():
  _, state = perturbed_state(SPEC, (8, 8, 1))
  params = jax.tree.map(lambda v: v - 0.9, state.params)  # some negative BN scales
  scores = criteria.get('bn_scale').fn(criteria.Context(SPEC, params, None, jax.random.key(0)))
  for name in SPEC.prunable_names:
    block = name.split('/')[0]
    np.testing.assert_array_equal(scores[name], np.abs(params[block]['bn2']['scale']))
  assert np.any(np.asarray(params['block1']['bn2']['scale']) < 0)
  dn = spec_lib.densenet_bc(16, 4, in_channels=1)
  _, dn_state = perturbed_state(dn, (8, 8, 1))
  first = dn.prunable_names[0]
  np.testing.assert_array_equal(
      criteria.get('bn_scale').fn(criteria.Context(dn, dn_state.params, None,
                                                   jax.random.key(0)))[first],
      np.abs(dn_state.params[first.split('/')[0]]['bn2']['scale']))


def test_normalise_per_layer_over_live_channels():
  scores = {'a': np.array([3.0, 4.0, 100.0]), 'b': np.array([1.0, 1.0, 4.0]),
            'c': np.zeros(2)}
  alive = {'a': np.array([True, True, False]), 'b': np.ones(3, bool), 'c': np.ones(2, bool)}
  l2 = criteria.normalise(scores, 'l2', alive)
  np.testing.assert_allclose(l2['a'][:2], [0.6, 0.8])
  np.testing.assert_allclose(l2['b'], np.array([1, 1, 4]) / np.sqrt(18))
  np.testing.assert_array_equal(l2['c'], 0)  # a zero layer stays zero
  np.testing.assert_allclose(criteria.normalise(scores, 'mean', alive)['b'], [0.5, 0.5, 2.0])
  assert criteria.normalise(scores, 'none') is scores
  with pytest.raises(ValueError, match="unknown prune.normalise 'max'"):
    criteria.normalise(scores, 'max')


def test_a_criterion_declares_what_it_needs():
  with pytest.raises(ValueError, match=r"unknown accumulator\(s\) \['hessian'\]"):
    criteria.register('needs_a_hessian', needs=('hessian',))
  assert criteria.get('fisher').needs == ('fisher',) and criteria.get('fisher').needs_fisher
  assert criteria.get('l1').needs == () and not criteria.get('l1').needs_fisher
  # A step that accumulates nothing keeps no statistics.
  _, state = perturbed_state(SPEC, (8, 8, 1))
  assert prune.init_prune_state(state, SPEC, ()).stats == {}


def test_bn_l1_adds_the_slimming_penalty_to_the_bn_scales_gradient():
  """train.bn_l1 = lam: the update's gradient is the cross-entropy's plus lam * sign(gamma) on
  the BN scales of the prunable channels, and nothing elsewhere."""
  ds = _digits(8)
  model, state = perturbed_state(SPEC, (8, 8, 1))
  tx = optax.sgd(1.0)  # the update is minus the gradient
  state = state.replace(opt_state=tx.init(state.params))
  x = train.make_preprocess(ds, crop_pad=0, flip=False, dtype=jnp.float32)(
      state.rng, 0, jnp.asarray(ds.train_images))
  labels = jnp.asarray(ds.train_labels)
  lam = 0.5
  (plain, _, _), (slim, metrics, _) = (
      fast_compile.run(train.make_update(model, tx, bn_l1=b), state, x, labels)
      for b in (0.0, lam))
  assert float(metrics['bn_l1_penalty']) == pytest.approx(
      lam * float(models.bn_l1(SPEC, state.params)), rel=1e-6)
  diff = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), plain.params, slim.params)
  coupled = {models.channel_bn(SPEC, n) for n in SPEC.prunable_names}
  for path, d in jax.tree_util.tree_flatten_with_path(diff)[0]:
    keys = tuple(k.key for k in path)
    if keys[:2] in coupled and keys[2] == 'scale':
      np.testing.assert_allclose(d, lam * np.sign(state.params[keys[0]][keys[1]]['scale']),
                                 rtol=1e-5, err_msg=str(keys))
    else:
      np.testing.assert_allclose(d, 0, atol=1e-6, err_msg=str(keys))


def test_channels_per_round_is_checked_against_the_network():
  from configs import sections  # pylint: disable=g-import-not-at-top
  from jaxbud import prune_tune  # pylint: disable=g-import-not-at-top
  p = sections.prune_section(rounds=38, channels_per_round=3)
  with pytest.raises(ValueError, match=r'prune.rounds=38 x prune.channels_per_round=3 removes '
                                       r'more channels than the 112 prunable channels'):
    prune_tune.validate_section(p, SPEC)
  p.rounds = 37
  prune_tune.validate_section(p, SPEC)
  p.channels_per_round = 0
  with pytest.raises(ValueError, match='prune.channels_per_round must be >= 1, got 0'):
    prune_tune.validate_section(p, SPEC)
