"""Pruning functions: Fisher saliency, global selection, exact compaction of every coupled tensor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxbud import criteria
from jaxbud import data as data_lib
from jaxbud import models
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import train
from tests import fast_compile


def random_scores(spec, seed=0):
  rng = np.random.default_rng(seed)  # host-drawn: no sampler compiled per width
  return {n: jnp.asarray(rng.uniform(size=w), jnp.float32)
          for n, w in zip(spec.prunable_names, spec.prunable)}


def perturbed_state(spec, image_shape, num_classes=10, seed=0):
  """A TrainState with non-trivial BN statistics and momentum, so slicing errors show."""
  model = models.build(spec, num_classes)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=10)
  # The structure of a fresh state, filled with numpy: no initialiser to compile. BN scales
  # and variances start at 1, everything else at 0, as at initialisation; then noise.
  abstract = jax.eval_shape(lambda k: train.create_state(model, tx, k, image_shape),
                            jax.random.key(seed))
  rng = np.random.default_rng(seed)  # numpy: no per-shape compilation in a test helper
  noisy = lambda t, lo: jax.tree_util.tree_map_with_path(
      lambda path, v: np.float32(path[-1].key in ('scale', 'var')) + np.float32(lo) +
      rng.random(v.shape, np.float32), t)
  params = noisy(abstract.params, -0.5)
  opt_state = jax.tree.map(lambda v: np.asarray(v) + 1.0 if v.ndim else v, tx.init(params))
  return model, train.TrainState(np.zeros((), np.int32), params,
                                 noisy(abstract.batch_stats, 0.1), opt_state,
                                 np.asarray(train.data_rng(seed)))


def masks_from(spec, keep):
  return {n: jnp.zeros((w,)).at[keep[n]].set(1.0)
          for n, w in zip(spec.prunable_names, spec.prunable)}


def test_select_removes_the_globally_least_salient_live_channels():
  spec = spec_lib.wrn(10, 1)  # widths (16, 32, 64)
  scores = {n: jnp.full((w,), 5.0) for n, w in zip(spec.prunable_names, spec.prunable)}
  scores['block1/conv1'] = scores['block1/conv1'].at[3].set(0.1).at[7].set(0.2)
  scores['block2/conv1'] = scores['block2/conv1'].at[0].set(0.15)
  new, keep = prune.select(spec, scores, 3)
  assert new.prunable == (16, 30, 63)
  assert 3 not in keep['block1/conv1'] and 7 not in keep['block1/conv1']
  assert keep['block2/conv1'][0] == 1 and keep['block0/conv1'].tolist() == list(range(16))
  # Already-removed channels are never chosen again, however low their score.
  alive = {n: np.ones(w, bool) for n, w in zip(spec.prunable_names, spec.prunable)}
  alive['block1/conv1'][3] = False
  new, keep = prune.select(spec, scores, 1, alive)
  assert new.prunable == (16, 31, 63) and 3 not in keep['block1/conv1']
  assert 7 in keep['block1/conv1'] and keep['block2/conv1'][0] == 1  # 0.15 went before 0.2


def test_select_breaks_ties_by_layer_then_channel_and_refuses_too_many():
  spec = spec_lib.wrn(10, 1)
  zeros = {n: jnp.zeros((w,)) for n, w in zip(spec.prunable_names, spec.prunable)}
  ranked = prune.rank(spec, zeros)
  assert [(n, c) for n, c, _ in ranked[:3]] == [('block0/conv1', 0), ('block0/conv1', 1),
                                                ('block0/conv1', 2)]
  assert prune.select(spec, zeros, 20)[0].prunable == (0, 28, 64)
  with pytest.raises(ValueError, match='cannot prune 113 channels: 112 live'):
    prune.select(spec, zeros, 113)
  with pytest.raises(ValueError, match=r"scores\['block0/conv1'\] has shape \(3,\)"):
    prune.select(spec, {**zeros, 'block0/conv1': jnp.zeros(3)}, 1)


@pytest.mark.parametrize('spec, shape, n_remove', [
    (spec_lib.wrn(10, 1, in_channels=1), (8, 8, 1), 20),
    (spec_lib.wrn(10, 1, in_channels=1), (8, 8, 1), 16),  # block0 can reach zero
    (spec_lib.densenet_bc(16, 4), (8, 8, 3), 12),
    (spec_lib.resnet(50).with_prunable([4] * 32), (32, 32, 3), 40),
    (spec_lib.resnet(18).with_prunable([3] * 8), (32, 32, 3), 6),
])
def test_compacted_network_gives_the_masked_networks_logits(spec, shape, n_remove):
  model, state = perturbed_state(spec, shape)
  scores = random_scores(spec)
  if n_remove == 16:  # force every channel of block0 out
    scores['block0/conv1'] = scores['block0/conv1'] - 10.0
  new_spec, keep = prune.select(spec, scores, n_remove)
  x = np.random.default_rng(9).standard_normal((3, *shape), np.float32)
  small = prune.shrink_state(state, spec, keep)
  new_model = models.build(new_spec, 10)

  def both(state, small, gates):
    masked = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                         gates=gates)
    compact = new_model.apply({'params': small.params, 'batch_stats': small.batch_stats}, x)
    m_train, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                             train=True, gates=gates, mutable=['batch_stats'])
    c_train, _ = new_model.apply({'params': small.params, 'batch_stats': small.batch_stats}, x,
                                 train=True, mutable=['batch_stats'])
    return masked, compact, m_train, c_train

  masked, compact, m_train, c_train = fast_compile.run(both, state, small,
                                                       masks_from(spec, keep))
  np.testing.assert_allclose(compact, masked, atol=2e-5, rtol=1e-4)
  # Train mode (batch statistics) is exact too, except that deep post-activation BN over three
  # 1x1 images (ResNet) amplifies float rounding; eval mode covers it.
  if spec.family != 'resnet':
    np.testing.assert_allclose(c_train, m_train, atol=2e-5, rtol=1e-5)
  # Every tree has exactly the structure of the smaller network, momentum included.
  template = jax.eval_shape(lambda k: train.create_state(
      new_model, train.make_optimizer(default.get_config().train, 10), k, shape),
                            jax.random.key(0))
  assert jax.tree.structure(small) == jax.tree.structure(template)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), small, template)
  assert models.count(small.params) == spec_lib.count_params(new_spec, 10)


def test_shrink_slices_momentum_like_the_params():
  spec = spec_lib.wrn(10, 1, in_channels=1)
  _, state = perturbed_state(spec, (8, 8, 1))
  _, keep = prune.select(spec, random_scores(spec), 10)
  small = prune.shrink_state(state, spec, keep)
  k = keep['block1/conv1']
  trace = lambda s: s.opt_state[1][0].trace['block1']
  np.testing.assert_array_equal(trace(small)['conv1']['kernel'],
                                trace(state)['conv1']['kernel'][..., k])
  np.testing.assert_array_equal(trace(small)['conv2']['kernel'],
                                trace(state)['conv2']['kernel'][:, :, k, :])
  np.testing.assert_array_equal(trace(small)['bn2']['scale'], trace(state)['bn2']['scale'][k])
  np.testing.assert_array_equal(small.batch_stats['block1']['bn2']['var'],
                                state.batch_stats['block1']['bn2']['var'][k])


def activation_and_grad(model, state, x, labels, name, shape):
  """(activation a, dL/da), both of `shape` (N, H, W, C), where the gate of prunable layer `name`
  sits, with L the batch's mean train-mode loss: taken explicitly, through an offset added at
  the gate (dL/d offset = dL/da)."""
  def loss(delta):
    orig, captured = models.apply_gate, {}

    def gate(h, gates, n):
      if n == name:
        captured['a'] = h
        return h + delta
      return orig(h, gates, n)

    models.apply_gate = gate
    try:
      logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                              train=True, mutable=['batch_stats'])
    finally:
      models.apply_gate = orig
    return train.cross_entropy(logits, labels).mean(), captured['a']

  (_, a), dl_da = fast_compile.run(jax.value_and_grad(loss, has_aux=True), jnp.zeros(shape))
  return a, dl_da


def test_fisher_saliency_equals_the_direct_per_example_computation():
  """0.5 * mean_n (sum_hw a * dL/da)^2, with a and dL/da taken explicitly."""
  spec = spec_lib.wrn(10, 1, in_channels=1)
  d = data_lib.digits()
  ds = data_lib.Dataset('digits', d.train_images[:8], d.train_labels[:8], d.test_images[:8],
                        d.test_labels[:8], 10, d.mean, d.std)
  model, state = perturbed_state(spec, (8, 8, 1))
  tx = train.make_optimizer(default.get_config().train, 10)
  ps = prune.init_prune_state(state, spec)
  step = jax.jit(prune.make_prune_step(model, tx, ds, crop_pad=0, flip=False))
  batch = {'image': jnp.asarray(ds.train_images), 'label': jnp.asarray(ds.train_labels)}
  ps2, _ = step(ps, batch)
  x = train.make_preprocess(ds, crop_pad=0, flip=False, dtype=jnp.float32)(
      ps.train.rng, 0, batch['image'])

  name = 'block1/conv1'
  a, dl_da = activation_and_grad(model, state, x, batch['label'], name, (8, 4, 4, spec.prunable[1]))
  g = jnp.sum(a * dl_da, axis=(1, 2))  # (N, C): per-example gradient wrt the channel gate
  expected = 0.5 * jnp.mean(g ** 2, axis=0)
  np.testing.assert_allclose(ps2.stats['fisher'][name], expected, rtol=1e-4, atol=1e-12)
  assert float(jnp.max(expected)) > 0
  # Accumulates over steps.
  ps3, _ = step(ps2, batch)
  assert float(jnp.sum(ps3.stats['fisher'][name])) > float(jnp.sum(ps2.stats['fisher'][name]))


def _product_gate(x, gates, name):
  """models.apply_gate as a plain product differentiated by JAX (before models.gate)."""
  if gates is None or name not in gates:
    return x
  g = gates[name]
  return x * (g[:, None, None, :] if g.ndim == 2 else g).astype(x.dtype)


@pytest.mark.parametrize('spec', [spec_lib.wrn(10, 1, in_channels=1),
                                  spec_lib.densenet_bc(16, 4, in_channels=1)],
                         ids=['wrn', 'densenet'])
def test_prune_step_with_the_custom_vjp_gate_equals_autodiff_of_the_product(spec, monkeypatch):
  """Same update, same saliency on live channels (1e-5 relative), 0 on masked channels."""
  d = data_lib.digits()
  ds = data_lib.Dataset('digits', d.train_images[:8], d.train_labels[:8], d.test_images[:8],
                        d.test_labels[:8], 10, d.mean, d.std)
  batch = {'image': jnp.asarray(ds.train_images), 'label': jnp.asarray(ds.train_labels)}
  model, state = perturbed_state(spec, (8, 8, 1))
  tx = train.make_optimizer(default.get_config().train, 10)
  ps = prune.init_prune_state(state, spec)
  first, last = spec.prunable_names[0], spec.prunable_names[-1]
  mask = dict(ps.mask, **{first: ps.mask[first].at[jnp.array([0, 3])].set(0),
                          last: ps.mask[last].at[1].set(0)})
  ps = ps.replace(mask=mask, stats={'fisher': jax.tree.map(lambda m: m * 0 + 0.25, mask)})

  def run():  # a fresh step each time: gates are looked up while jit traces it
    return fast_compile.run(prune.make_prune_step(model, tx, ds, crop_pad=0, flip=False),
                            ps, batch)

  new, new_metrics = run()
  monkeypatch.setattr(models, 'apply_gate', _product_gate)
  old, old_metrics = run()
  np.testing.assert_allclose(new_metrics['train_loss'], old_metrics['train_loss'], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new.train), jax.tree.leaves(old.train)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for name in spec.prunable_names:
    live = np.asarray(mask[name]) == 1
    got, want = np.asarray(new.stats['fisher'][name]), np.asarray(old.stats['fisher'][name])
    np.testing.assert_allclose(got[live], want[live], rtol=1e-5, atol=0, err_msg=name)
    np.testing.assert_array_equal(got[~live], 0.25, err_msg=name)  # nothing added when masked
    assert np.all(want[~live] > 0.25), name  # autodiff of the product adds sum x * dL/dy there
    assert np.all(got[live] > 0.25), name


def test_criteria_registry_and_l1():
  spec = spec_lib.wrn(10, 1, in_channels=1)
  _, state = perturbed_state(spec, (8, 8, 1))
  ctx = criteria.Context(spec, state.params, None, jax.random.key(0))
  l1 = criteria.get('l1').fn(ctx)
  kernel = state.params['block2']['conv1']['kernel']
  np.testing.assert_allclose(l1['block2/conv1'], np.abs(kernel).sum(axis=(0, 1, 2)), rtol=1e-6)
  signed = criteria.get('l1_signed').fn(ctx)
  np.testing.assert_allclose(signed['block2/conv1'], kernel.sum(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-5)  # a signed sum: near-zero totals
  assert criteria.get('random').fn(ctx)['block0/conv1'].shape == (16,)
  with pytest.raises(ValueError, match=r"unknown prune criterion 'l3'; expected one of \["):
    criteria.get('l3')
  saved = criteria.macs_saved(spec, 8, 10)
  assert saved['block0/conv1'] == 8 * 8 * 9 * (16 + 16)  # conv1 out + conv2 in at 8x8
  ctx = criteria.Context(spec, state.params, {n: jnp.ones((w,)) for n, w in
                                              zip(spec.prunable_names, spec.prunable)},
                         jax.random.key(0), options=type('O', (), {'beta': 1e-6})(),
                         image_size=8)
  cost = criteria.get('fisher_cost').fn(ctx)
  assert float(cost['block0/conv1'][0]) == pytest.approx(1 - 1e-6 * saved['block0/conv1'])
