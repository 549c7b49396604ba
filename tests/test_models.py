"""Built networks: shapes, parameter counts against the spec, gates, compaction, init, padding.

CPU time goes to XLA compilation, so the tests share a few tiny networks, apply them through one
compiled program per network (every gate filled in, with ones where a test sets none; LLVM
optimisation off), and fill variables with NumPy instead of compiling the real initialiser, which
only the init tests use.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbud import models as M
from jaxbud import spec as S
from tests import fast_compile

KEY = jax.random.key(0)
IMG8, IMG16, IMG32 = (8, 8, 3), (16, 16, 3), (32, 32, 3)

WRN = S.wrn(10, 1)  # blocks 16->16 s1 (no shortcut), 16->32 s2, 32->64 s2
DN = S.densenet_bc(16, 4)  # 2 dense layers per block, bottleneck 16, growth 4
R18 = S.ResNetSpec(18, ((4,),) * 8, stage_widths=(4, 8, 8, 8), stem=4)  # tiny basic blocks
R50 = S.ResNetSpec(50, ((4, 4),) * 16, stage_widths=(4, 4, 4, 4), stem=8)  # tiny bottlenecks
NETS = [(WRN, IMG8), (DN, IMG8), (R18, IMG16), (R50, IMG16)]
NET_IDS = ['wrn', 'densenet', 'resnet18', 'resnet50']


def _init(spec, image_shape, num_classes=10, seed=0):
  """The model and its variables from the real (jitted, random) initialiser. The key is an 'rbg'
  one: it draws from the same initialisers, and compiles ~4x faster than threefry on CPU."""
  model = M.build(spec, num_classes)
  return model, M.init(model, jax.random.key(seed, impl='rbg'), image_shape)


def _abstract(spec, image_shape, num_classes=10, dtype=jnp.float32):
  model = M.build(spec, num_classes, dtype)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return model, jax.eval_shape(model.init, KEY, x)


@functools.cache
def _variables(spec, image_shape, num_classes=10, dtype=jnp.float32, seed=0):
  """The model and random variables with the initialiser's structure and shapes, as after some
  training: non-trivial BN affine parameters and running statistics."""
  model, abstract = _abstract(spec, image_shape, num_classes, dtype)
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = path[-1].key
    if name == 'kernel':
      fan_out = a.shape[0] if a.ndim == 2 else a.shape[0] * a.shape[1] * a.shape[3]
      x = rng.normal(0, np.sqrt(2 / fan_out), a.shape)
    elif name in ('scale', 'var'):
      x = rng.uniform(0.5, 1.5, a.shape)
    elif name == 'bias':
      x = rng.uniform(-0.2, 0.5, a.shape)
    else:
      assert name == 'mean', path
      x = rng.normal(0, 0.2, a.shape)
    return jnp.asarray(x, a.dtype)

  return model, jax.tree_util.tree_map_with_path(fill, abstract)


def _compile(fn, *args, **kwargs):
  """fn jitted and compiled with fast_compile.OPTIONS for the shapes and dtypes of the arguments."""
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (args, kwargs))
  return jax.jit(fn).lower(*abstract[0], **abstract[1]).compile(fast_compile.OPTIONS)


@functools.cache
def _compiled_apply(spec, num_classes, dtype, train, mutable, treedef, leaves):
  model = M.build(spec, num_classes, dtype)
  variables, x, gates = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(*a) for a in leaves])
  return _compile(functools.partial(model.apply, train=train, mutable=mutable),
                  variables, x, gates=gates)


def _ones(spec):
  return {n: jnp.ones(w) for n, w in zip(spec.prunable_names, spec.prunable)}


def _apply(model, variables, x, train=False, mutable=False, gates=None, fill=True):
  """Jitted model.apply. With `fill`, every prunable name gets a gate (ones unless given), so a
  network compiles once for all gate settings; gates of ones are the identity (test_gates)."""
  if fill:
    gates = {**_ones(model.spec), **(gates or {})}
  mutable = tuple(mutable) if isinstance(mutable, list) else mutable
  leaves, treedef = jax.tree.flatten((variables, x, gates))
  fn = _compiled_apply(model.spec, model.num_classes, model.dtype, train, mutable, treedef,
                       tuple((a.shape, a.dtype) for a in leaves))
  return fn(variables, x, gates=gates)


def _images(shape, n=4, seed=1):
  # numpy, not jax.random: an eager jax.random.normal compiles a sampler per shape (seconds).
  return np.random.default_rng(seed).standard_normal((n, *shape), np.float32)


def _copy(tree):
  """Fresh nested dicts (leaves shared), so entries can be replaced or deleted."""
  return {k: _copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _kernel_paths(params):
  """{'block3/conv1': kernel, ...} for every conv/dense kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(p.key for p in path[:-1]): x for path, x in flat if path[-1].key == 'kernel'}


def _lookup(tree, path):
  for part in path.split('/'):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _max_diff(a, b):
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


# Channels dropped by the compaction tests: {prunable index: channels}; 'all' empties the layer.
DROPS = {
    'wrn-one-channel': (WRN, IMG8, {1: [7]}),
    'wrn-partial': (WRN, IMG8, {0: [3], 1: [1, 5, 30], 2: [63]}),
    'wrn-zero-blocks': (WRN, IMG8, {0: 'all', 1: 'all'}),  # without and with a shortcut
    'wrn-all-zero': (WRN, IMG8, {0: 'all', 1: 'all', 2: 'all'}),
    'densenet-partial': (DN, IMG8, {0: [2], 3: [15, 0]}),
    'densenet-zero-layers': (DN, IMG8, {1: 'all', 4: 'all'}),
    'resnet18': (R18, IMG16, {2: [1], 7: 'all'}),
    # block2/conv1 (1x1), block5/conv2 (3x3), all of block7/conv2 and of block9/conv1.
    'resnet50': (R50, IMG16, {4: [1], 11: [0], 15: 'all', 18: 'all'}),
}


def _dropped(spec, drops):
  """{index: channels dropped} with 'all' resolved, and the spec without those channels."""
  drops = {i: list(range(spec.prunable[i])) if d == 'all' else d for i, d in drops.items()}
  widths = [w - len(drops.get(i, ())) for i, w in enumerate(spec.prunable)]
  return drops, spec.with_prunable(widths)


PRUNED = {k: (_dropped(spec, drops)[1], shape) for k, (spec, shape, drops) in DROPS.items()}


# ----------------------------------------------------------------------------- shapes and counts

@pytest.mark.parametrize('spec, image_shape, num_classes', [
    (S.wrn(10, 1, in_channels=1), (8, 8, 1), 7),
    (WRN, IMG32, 10),
] + [(spec, shape, 10) for spec, shape in NETS],
    ids=['wrn-gray8', 'wrn-32'] + NET_IDS)
def test_tiny_output_shape_and_param_count(spec, image_shape, num_classes):
  model, v = _variables(spec, image_shape, num_classes)
  assert set(v) == {'params', 'batch_stats'}
  assert M.count(v['params']) == S.count_params(spec, num_classes)
  out = _apply(model, v, _images(image_shape))
  assert out.shape == (4, num_classes) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('depth', [18, 50])
def test_full_resnet_shapes_abstract(depth):
  spec = S.resnet(depth)
  model = M.build(spec, 1000)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out, v = jax.eval_shape(model.init_with_output, KEY, x)
  assert out.shape == (2, 1000)
  assert M.count(v['params']) == S.count_params(spec, 1000)
  assert _kernel_paths(v['params'])['head'].shape == (512 * (4 if depth == 50 else 1), 1000)


def _random_widths(spec, seed, zero_frac):
  rng = np.random.default_rng(seed)
  return spec.with_prunable(
      0 if rng.random() < zero_frac else int(rng.integers(1, w + 1)) for w in spec.prunable)


@pytest.mark.parametrize('spec, num_classes', [
    (S.wrn(40, 2), 10), (S.densenet_bc(100, 12), 10), (S.resnet(50), 1000), (S.resnet(18), 100)],
    ids=['wrn40-2', 'densenet-bc100', 'resnet50', 'resnet18'])
def test_big_param_counts_abstract(spec, num_classes):
  pruned = _random_widths(spec, 0, zero_frac=0.3)
  assert 0 in pruned.prunable
  for s in (spec, pruned):
    params = _abstract(s, IMG32, num_classes)[1]['params']
    assert M.count(params) == S.count_params(s, num_classes)


@pytest.mark.parametrize('case', PRUNED)
def test_pruned_tiny_runs_and_counts(case):
  spec, image_shape = PRUNED[case]
  model, v = _variables(spec, image_shape)
  assert M.count(v['params']) == S.count_params(spec)
  x = _images(image_shape)
  out = _apply(model, v, x)
  assert out.shape == (4, 10) and np.isfinite(np.asarray(out)).all()
  if case not in ('wrn-all-zero', 'densenet-zero-layers', 'resnet50'):
    return
  # Training mode too (BN over zero channels is skipped).
  out, updates = _apply(model, v, x, train=True, mutable=['batch_stats'])
  assert out.shape == (4, 10) and np.isfinite(np.asarray(out)).all()
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(v['batch_stats'])


@pytest.mark.parametrize('case', ['wrn-zero-blocks', 'densenet-zero-layers', 'resnet18'])
def test_real_init_with_zero_width_layers(case):
  spec, shape = PRUNED[case]
  assert 0 in spec.prunable
  model, v = _init(spec, shape)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), v) == jax.tree.map(
      lambda a: (a.shape, a.dtype), _abstract(spec, shape)[1])
  assert M.count(v['params']) == S.count_params(spec)
  assert np.isfinite(np.asarray(_apply(model, v, _images(shape)))).all()


@pytest.mark.parametrize('spec, image_shape', list(PRUNED.values()) + NETS + [
    (_random_widths(S.resnet(50), 2, zero_frac=0.4), IMG32),
    (_random_widths(S.densenet_bc(100, 12), 3, zero_frac=0.4), IMG32)])
def test_prunable_names_are_the_conv_paths(spec, image_shape):
  params = _abstract(spec, image_shape)[1]['params']
  kernels = _kernel_paths(params)
  names = spec.prunable_names
  assert len(set(names)) == len(names)
  # A conv has a kernel iff it has outputs and inputs: in a bottleneck whose conv1 is pruned away,
  # conv2 outputs zeros and has no kernel (its BN, with `width` channels, remains).
  has_input = dict.fromkeys(names, True)
  if spec.family == 'resnet' and spec.kind == 'bottleneck':
    for b, (m1, _) in enumerate(spec.inner):
      has_input[f'block{b}/conv2'] = m1 > 0
  live = {n for n, w in zip(names, spec.prunable) if w > 0 and has_input[n]}
  assert set(kernels) & set(names) == live
  for name, width in zip(names, spec.prunable):
    kernel = _lookup(params, name + '/kernel')
    if name in live:
      assert kernel is not None and kernel.shape[-1] == width, name
    else:
      assert kernel is None, name
    bn = name.replace('conv', 'bn') if spec.family == 'resnet' else name.split('/')[0] + '/bn2'
    scale = _lookup(params, bn + '/scale')
    assert (scale is None) if width == 0 else (scale.shape == (width,)), bn


# ----------------------------------------------------------------------------- gates

@pytest.mark.parametrize('spec, image_shape', NETS, ids=NET_IDS)
def test_gates(spec, image_shape):
  model, v = _variables(spec, image_shape)
  x = _images(image_shape)
  ungated = _apply(model, v, x, fill=False)
  base = _apply(model, v, x)  # every gate one
  np.testing.assert_allclose(base, ungated, rtol=1e-6, atol=1e-6)
  # Every prunable name is wired to its gate: closing it changes the logits.
  for name, width in zip(spec.prunable_names, spec.prunable):
    assert _max_diff(_apply(model, v, x, gates={name: jnp.zeros(width)}), base) > 1e-4, name


def test_per_example_gates():
  model, v = _variables(WRN, IMG8)
  x = _images(IMG8)
  g = jnp.ones(32).at[5].set(0)
  shared = _apply(model, v, x, gates={'block1/conv1': g})
  base = _apply(model, v, x)
  out = _apply(model, v, x, gates={'block1/conv1': jnp.ones((4, 32)).at[0].set(g)})
  np.testing.assert_allclose(out[0], shared[0], atol=1e-6)
  np.testing.assert_allclose(out[1:], base[1:], atol=1e-6)
  assert _max_diff(out[0], base[0]) > 1e-4


@pytest.mark.parametrize('train', [False, True])
def test_zero_gate_equals_masked_conv2_input(train):
  """Gating channel c (after BN2 and ReLU) is conv2 not seeing channel c, in both modes."""
  model, v = _variables(WRN, IMG8)
  x = _images(IMG8)
  block, c = 'block1', 7
  gated = _apply(model, v, x, train=train, mutable=['batch_stats'],
                 gates={f'{block}/conv1': jnp.ones(32).at[c].set(0)})
  masked_v = _copy(v)
  kernel = masked_v['params'][block]['conv2']['kernel']
  masked_v['params'][block]['conv2']['kernel'] = kernel.at[:, :, c, :].set(0)
  masked = _apply(model, masked_v, x, train=train, mutable=['batch_stats'])
  np.testing.assert_allclose(gated[0], masked[0], atol=1e-5)
  for a, b in zip(jax.tree.leaves(gated[1]), jax.tree.leaves(masked[1])):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _product_gate(x, g):
  """The gate as a plain product differentiated by JAX: the reference for `M.gate`'s VJP."""
  return x * (g[:, None, None, :] if g.ndim == 2 else g).astype(x.dtype)


@pytest.mark.parametrize('shape', [(3, 6), (6,)], ids=['per-example', 'shared'])
def test_gate_gradients_equal_autodiff_of_the_product(shape):
  """Same output and dx; same dg wherever the gate is open, 0 (not sum x * dy) where closed."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  g = rng.uniform(0.25, 2.0, shape).astype(np.float32)
  g[..., 0] = 1.0
  closed = np.zeros(shape, bool)
  closed[..., 4] = True
  closed.flat[1] = True
  g = jnp.asarray(np.where(closed, 0, g))

  def grads(gate):
    return jax.grad(lambda x, g: jnp.sum(jnp.tanh(gate(x, g)) * w), argnums=(0, 1))(x, g)

  (dx, dg), (want_dx, want_dg) = grads(M.gate), grads(_product_gate)
  np.testing.assert_array_equal(M.gate(x, g), _product_gate(x, g))
  np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=0)
  assert dg.shape == g.shape and dg.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(want_dg)))
  np.testing.assert_allclose(dg[~closed], want_dg[~closed], rtol=1e-6, atol=1e-6 * scale)
  np.testing.assert_array_equal(dg[closed], 0)
  assert float(jnp.min(jnp.abs(want_dg[closed]))) > 0  # autodiff's value there, dropped


def test_gate_gradient_accumulates_in_float32_for_bfloat16():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.bfloat16)
  dy = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.bfloat16)
  y, vjp = jax.vjp(M.gate, x, jnp.ones((2, 3), jnp.float32))
  dx, dg = vjp(dy)
  assert y.dtype == dx.dtype == jnp.bfloat16 and dg.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dy, np.float32))
  exact = np.sum(np.asarray(x, np.float64) * np.asarray(dy, np.float64), axis=(1, 2))
  np.testing.assert_allclose(dg, exact, rtol=1e-5)  # a bfloat16 sum of 256 terms: ~1e-2


# ----------------------------------------------------------------------------- compaction

def _layer_names(spec, name):
  """(layer, conv producing the channels, its BN, the conv consuming them) of a prunable name."""
  layer, conv = name.split('/')
  if spec.family == 'resnet':
    j = int(conv[len('conv'):])
    return layer, conv, f'bn{j}', f'conv{j + 1}'
  return layer, conv, 'bn2', 'conv2'


def _compact(spec, variables, drops):
  """Variables of the smaller network: conv kernel [..., keep], BN scale/bias/mean/var [keep],
  next conv kernel [:, :, keep, :]; a layer left with no channels loses all three."""
  v = _copy(variables)
  for i, drop in drops.items():
    layer, conv, bn, nxt = _layer_names(spec, spec.prunable_names[i])
    keep = np.array([c for c in range(spec.prunable[i]) if c not in drop], np.int32)
    p, stats = v['params'][layer], v['batch_stats'][layer]
    if keep.size == 0:
      del p[conv], p[bn], p[nxt], stats[bn]
      continue
    p[conv]['kernel'] = p[conv]['kernel'][..., keep]
    p[bn] = {k: x[keep] for k, x in p[bn].items()}
    stats[bn] = {k: x[keep] for k, x in stats[bn].items()}
    p[nxt]['kernel'] = p[nxt]['kernel'][:, :, keep, :]
  return v


@pytest.mark.parametrize('case', DROPS)
def test_compaction_is_exact(case):
  """Gating channels to zero (eval mode) == the smaller spec with sliced variables."""
  spec, shape, drops = DROPS[case]
  drops, small_spec = _dropped(spec, drops)
  model, v = _variables(spec, shape)
  x = _images(shape)
  gates = {}
  for i, drop in drops.items():
    gates[spec.prunable_names[i]] = jnp.ones(spec.prunable[i]).at[jnp.array(drop)].set(0)
  gated = _apply(model, v, x, gates=gates)
  assert _max_diff(gated, _apply(model, v, x)) > 1e-3  # the dropped channels mattered

  small = M.build(small_spec)
  small_v = _compact(spec, v, drops)
  # The sliced variables have exactly the structure and shapes the small network initialises.
  assert jax.tree.map(lambda a: a.shape, small_v) == jax.tree.map(
      lambda a: a.shape, _abstract(small_spec, shape)[1])
  assert M.count(small_v['params']) == S.count_params(small_spec)
  np.testing.assert_allclose(_apply(small, small_v, x), gated, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- initialisation

@pytest.fixture(scope='module')
def wrn_init():
  return _init(WRN, IMG32)


def test_real_init_matches_abstract(wrn_init):
  _, v = wrn_init
  assert jax.tree.map(lambda a: (a.shape, a.dtype), v) == jax.tree.map(
      lambda a: (a.shape, a.dtype), _abstract(WRN, IMG32)[1])
  assert M.count(v['params']) == S.count_params(WRN)


def test_init_compiled_for_one_run_gives_the_default_compilations_bits():
  """models.init compiles with jaxbud.parallel.INIT_CPU_OPTIONS (faster); the values must be
  the ones XLA's default compilation gives, or every published figure would move. (The same
  initialisers make every family's parameters; WRN-10-1 has all of them.)"""
  model = M.build(WRN)
  plain = jax.jit(lambda k: model.init(k, jnp.zeros((1, *IMG8), jnp.float32)))(KEY)
  fast = M.init(model, KEY, IMG8)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_he_fan_out_normal_init(wrn_init):
  _, v = wrn_init
  kernels = _kernel_paths(v['params'])
  big = {n: k for n, k in kernels.items() if n != 'head' and k.size >= 10_000}
  assert set(big) == {'block2/conv1', 'block2/conv2'}
  for name, k in big.items():
    kh, kw, _, cout = k.shape
    std = np.sqrt(2 / (kh * kw * cout))
    w = np.asarray(k)
    assert abs(w.std() / std - 1) < 0.05, name
    assert abs(w.mean()) < 0.05 * std, name
    assert np.abs(w).max() > 2.5 * std, name  # untruncated: a 2-sigma truncation would fail
  # Fan-out, not fan-in: block2/conv1 is 32 -> 64, where the two differ by sqrt(2).
  assert abs(np.asarray(big['block2/conv1']).std() / np.sqrt(2 / (9 * 32)) - 1) > 0.2
  # Small kernels too, loosely: the stem (3 -> 16) and a 1x1 shortcut (32 -> 64).
  for name in ('stem', 'block2/shortcut'):
    kh, kw, _, cout = kernels[name].shape
    assert abs(np.asarray(kernels[name]).std() / np.sqrt(2 / (kh * kw * cout)) - 1) < 0.15


def test_bn_and_bias_init(wrn_init):
  _, v = wrn_init
  seen = set()
  for path, x in jax.tree_util.tree_flatten_with_path(v['params'])[0]:
    keys = [p.key for p in path]
    leaf, owner = keys[-1], keys[-2]
    seen.add(leaf)
    if leaf == 'scale':
      assert owner.startswith('bn') and (np.asarray(x) == 1).all(), keys
    elif leaf == 'bias':  # only BN and the classifier have biases
      assert owner.startswith('bn') or owner == 'head', keys
      assert (np.asarray(x) == 0).all(), keys
    else:
      assert leaf == 'kernel', keys
  assert seen == {'kernel', 'scale', 'bias'}
  for path, x in jax.tree_util.tree_flatten_with_path(v['batch_stats'])[0]:
    assert (np.asarray(x) == (1 if path[-1].key == 'var' else 0)).all()


@pytest.mark.parametrize('spec, image_shape, torch_bias', [
    (WRN, IMG32, False), (DN, IMG8, False), (R18, IMG16, True)], ids=NET_IDS[:3])
def test_classifier_init_is_torch_linears(spec, image_shape, torch_bias, wrn_init):
  """The head's weight is U(+-1/sqrt(fan_in)), torch.nn.Linear's default, which the reference
  keeps; its bias is 0 in the reference's WRN and DenseNet (they zero it), torch's default
  U(+-1/sqrt(fan_in)) in the ResNet (torchvision leaves it)."""
  _, v = wrn_init if spec is WRN else _init(spec, image_shape)
  w, b = (np.asarray(v['params']['head'][k]) for k in ('kernel', 'bias'))
  fan_in = w.shape[0]
  bound = 1 / np.sqrt(fan_in)
  assert w.shape == (fan_in, 10) and b.shape == (10,)
  assert np.abs(w).max() <= bound  # a normal init (flax's lecun_normal) exceeds it
  assert np.abs(w).max() > 0.9 * bound and len(np.unique(w)) == w.size
  assert abs(w.std() * np.sqrt(3) / bound - 1) < 0.15  # uniform: std = bound / sqrt(3)
  if torch_bias:
    assert np.abs(b).max() <= bound and len(np.unique(b)) == b.size and (b != 0).all()
  else:
    assert (b == 0).all()


# ----------------------------------------------------------------------------- BN and padding

@pytest.fixture(scope='module')
def wrn32_trace():
  """WRN-10-1 on 32x32 in training mode, with every module's output captured."""
  model, v = _variables(WRN, IMG32)
  x = 1 + 2 * _images(IMG32)
  fn = functools.partial(model.apply, train=True, capture_intermediates=True,
                         mutable=['batch_stats', 'intermediates'])
  _, state = _compile(fn, v, x)(v, x)
  return model, v, state['intermediates'], state['batch_stats']


def test_bn_momentum_and_eps(wrn32_trace):
  model, v, inter, new_stats = wrn32_trace
  # block0/bn1 normalises the stem output; running stats move 10% towards the batch's (PyTorch
  # momentum 0.1); Flax keeps the biased batch variance.
  stem = inter['stem']['__call__'][0]
  mean, var = stem.mean((0, 1, 2)), stem.var((0, 1, 2))
  old, new = v['batch_stats']['block0']['bn1'], new_stats['block0']['bn1']
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new['var'], 0.9 * old['var'] + 0.1 * var, rtol=1e-4)
  found = set()

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, M.BatchNorm):
      found.add((context.module.momentum, context.module.epsilon))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct((1, *IMG32), jnp.float32))
  assert found == {(0.9, 1e-5)}


def test_stride2_conv_pads_symmetrically(wrn32_trace):
  _, v, inter, _ = wrn32_trace
  sizes = [inter[m]['__call__'][0].shape[1:3] for m in ('stem', 'block0', 'block1', 'block2')]
  assert sizes == [(32, 32), (32, 32), (16, 16), (8, 8)]

  o = jax.nn.relu(inter['block1']['bn1']['__call__'][0])  # input of block1/conv1 (16 -> 32, s2)
  assert o.shape == (4, 32, 32, 16)
  kernel = v['params']['block1']['conv1']['kernel']
  got = inter['block1']['conv1']['__call__'][0]
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(2, 2),
                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                           precision=jax.lax.Precision.HIGHEST)
  want = conv(o, kernel, padding=((1, 1), (1, 1)))
  assert got.shape == want.shape == (4, 16, 16, 32)
  np.testing.assert_allclose(got, want, atol=1e-4)
  # PyTorch's padding=1: output (i, j) is centred on input (2i, 2j). Flax's 'SAME' pads (0, 1)
  # for stride 2 on even sizes, centring it on (2i + 1, 2j + 1) instead.
  padded = jnp.pad(o, ((0, 0), (1, 1), (1, 1), (0, 0)))
  for i, j in ((0, 0), (5, 9), (15, 15)):
    patch = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
    np.testing.assert_allclose(got[:, i, j], jnp.einsum('nhwc,hwcd->nd', patch, kernel,
                                                        precision='highest'), atol=1e-4)
  assert _max_diff(conv(o, kernel, padding='SAME'), got) > 1e-2
  # The 1x1 stride-2 shortcut samples the even pixels, as PyTorch's does.
  shortcut = v['params']['block1']['shortcut']['kernel'][0, 0]
  np.testing.assert_allclose(inter['block1']['shortcut']['__call__'][0],
                             jnp.einsum('nhwc,cd->nhwd', o[:, ::2, ::2], shortcut,
                                        precision='highest'), atol=1e-4)


# ----------------------------------------------------------------------------- dtype

@pytest.mark.parametrize('spec, image_shape', NETS, ids=NET_IDS)
def test_bfloat16_build_keeps_float32_variables(spec, image_shape):
  _, abstract = _abstract(spec, image_shape, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_logits():
  model, v = _variables(WRN, IMG8, dtype=jnp.bfloat16)
  x = _images(IMG8)
  out = _apply(model, v, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (4, 10)
  ref = _apply(M.build(WRN), v, x)
  assert ref.dtype == jnp.float32
  assert _max_diff(out, ref) < 0.05 * float(np.abs(np.asarray(ref)).max())


def test_build_rejects_unknown_family():
  class Fake:
    family = 'vgg'
  with pytest.raises(ValueError, match=r"unknown model family 'vgg'; expected one of "
                     r"\['densenet_bc', 'resnet', 'wrn'\]"):
    M.build(Fake())


def test_unknown_gate_name_is_an_error():
  spec = S.wrn(10, 1, in_channels=1)
  model = M.build(spec, 10)
  variables = M.init(model, jax.random.key(0), (8, 8, 1))
  with pytest.raises(ValueError, match=r"unknown gate name\(s\) \['block9/conv1'\]"):
    model.apply(variables, jnp.zeros((1, 8, 8, 1)), gates={'block9/conv1': jnp.ones(3)})
