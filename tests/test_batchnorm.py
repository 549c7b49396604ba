"""jaxbud.models.BatchNorm against flax.linen.BatchNorm, and its hand-written backward pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbud import models
from tests import fast_compile

# (N, H, W, C): k * C about 256 (k = 8 and 2), rows not divisible by k (k halves down to 1),
# C above 256 (k = 1), and the stem's 3 channels.
SHAPES = [(8, 6, 6, 32), (4, 4, 4, 128), (3, 5, 7, 16), (2, 3, 3, 300), (4, 8, 8, 3)]


def _pair(shape, dtype=jnp.float32, train=True):
  rng = np.random.default_rng(sum(shape))
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, jnp.float32).astype(dtype)
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  ours, ref = models.BatchNorm(**kw), nn.BatchNorm(**kw)
  v = ref.init(jax.random.key(0), x)
  c = shape[-1]
  v = {'params': {'scale': jnp.asarray(rng.random(c) + 0.5, jnp.float32),
                  'bias': jnp.asarray(rng.standard_normal(c), jnp.float32)},
       'batch_stats': {'mean': jnp.asarray(rng.standard_normal(c), jnp.float32),
                       'var': jnp.asarray(rng.random(c) + 0.5, jnp.float32)}}
  return x, v, ours, ref


def test_same_variables_as_flax():
  x = jnp.ones((2, 4, 4, 8))
  ours = models.BatchNorm(momentum=0.9).init(jax.random.key(0), x)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9).init(jax.random.key(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('shape', SHAPES)
def test_train_mode_matches_flax(shape):
  x, v, ours, ref = _pair(shape)
  y, s = fast_compile.run(lambda v, x: ours.apply(v, x, mutable=['batch_stats']), v, x)
  y_ref, s_ref = fast_compile.run(lambda v, x: ref.apply(v, x, mutable=['batch_stats']), v,
                                  x)
  np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # A smooth loss (no ReLU kink, where float rounding may flip a mask) through both.
  w = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)

  def loss(module, params, x):
    y, _ = module.apply({'params': params, 'batch_stats': v['batch_stats']}, x,
                        mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * w)

  grad = lambda module: lambda p, x: jax.grad(loss, argnums=(1, 2))(module, p, x)
  g = fast_compile.run(grad(ours), v['params'], x)
  g_ref = fast_compile.run(grad(ref), v['params'], x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize('shape', SHAPES[:2])
def test_eval_mode_matches_flax(shape):
  x, v, ours, ref = _pair(shape, train=False)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)


def test_bfloat16_matches_flax():
  x, v, ours, ref = _pair((8, 6, 6, 32), dtype=jnp.bfloat16)
  y, s = ours.apply(v, x, mutable=['batch_stats'])
  y_ref, s_ref = ref.apply(v, x, mutable=['batch_stats'])
  assert y.dtype == y_ref.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                             rtol=2e-2, atol=2e-2)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_statistics_cotangents_are_exact():
  """Gradients through the returned mean and variance equal autodiff of the formula."""
  shape = (4, 5, 5, 16)
  x = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)
  scale, bias = jnp.full((16,), 1.5), jnp.full((16,), 0.25)
  a, b, w = jnp.arange(16.) / 16, jnp.linspace(-1, 1, 16), jnp.cos(x)

  def ref(x, scale, bias):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(x * x, (0, 1, 2)) - mean ** 2
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var

  def loss(f, x, scale, bias):
    y, mean, var = f(x, scale, bias)
    return jnp.sum(y * w) + jnp.sum(mean * a) + jnp.sum(var * b)

  ours = lambda x, s, c: models.batch_norm_train(x, s, c, 1e-5)
  grad = lambda f: lambda *a: jax.grad(loss, argnums=(1, 2, 3))(f, *a)
  g = fast_compile.run(grad(ours), x, scale, bias)
  g_ref = fast_compile.run(grad(ref), x, scale, bias)
  for p, q in zip(g, g_ref):
    np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('shape', SHAPES + [(2, 2, 2, 0)])
def test_channel_sum(shape):
  x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) + 1
  got = models.channel_sum(jnp.asarray(x))
  assert got.shape == (shape[-1],) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, x.astype(np.float64).sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('shape', SHAPES[:3] + [(0, 4, 4, 8)])
def test_channel_sum_per_example(shape):
  x = np.random.default_rng(4).standard_normal(shape).astype(np.float32) + 1
  got = models.channel_sum(jnp.asarray(x), per_example=True)
  assert got.shape == (shape[0], shape[-1]) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, x.astype(np.float64).sum((1, 2)), rtol=1e-5, atol=1e-4)


def test_plain_xla_switch_gives_the_same_network_with_flax_code():
  """models.plain_xla: flax's BatchNorm and jnp.sum in place of the CPU-tuned pieces."""
  from jaxbud import spec as spec_lib  # pylint: disable=import-outside-toplevel
  model = models.build(spec_lib.wrn(10, 1))
  x = np.random.default_rng(0).standard_normal((4, 8, 8, 3), np.float32)
  v = models.init(model, jax.random.key(1), (8, 8, 3))
  gates = {'block0/conv1': jnp.full((4, 16), 0.5)}

  def loss(p, g):
    y, upd = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                         gates=g, mutable=['batch_stats'])
    return jnp.sum(y ** 2), upd

  def grads():  # traced afresh each time: the switch acts at trace time
    return fast_compile.run(lambda p, g: jax.grad(loss, argnums=(0, 1), has_aux=True)(p, g),
                            v['params'], gates)

  def jaxpr():  # a new function each time: jax caches traces per function
    return str(jax.make_jaxpr(lambda p, g: loss(p, g))(v['params'], gates))

  tuned_jaxpr = jaxpr()
  tuned = grads()
  assert not models.PLAIN_XLA
  with models.plain_xla():
    assert models.PLAIN_XLA
    plain_jaxpr = jaxpr()
    plain = grads()
    np.testing.assert_allclose(models.channel_sum(x), jnp.sum(x, (0, 1, 2)), rtol=1e-5)
    assert models.channel_sum(x, per_example=True).shape == (4, 3)
  assert not models.PLAIN_XLA
  # Custom backward passes: every BN and the gate, then the gate alone.
  assert tuned_jaxpr.count('custom_vjp_call') > plain_jaxpr.count('custom_vjp_call') >= 1
  assert jax.tree.structure(tuned) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
