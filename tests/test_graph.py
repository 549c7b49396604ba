"""jaxbud.graph on jaxbud's own networks (golden: the hand-written slicing plan), the API's
errors, and the regressions for the failures DepGraph's users report."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbud.graph as jg
from jaxbud import models
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud.errors import UsageError
from tests import graph_check

SPECS = [
    (spec_lib.wrn(10, 1, in_channels=1), (8, 8, 1)),
    (spec_lib.densenet_bc(16, 4), (8, 8, 3)),
    (spec_lib.resnet(50).with_prunable([4] * 32), (32, 32, 3)),
    (spec_lib.resnet(18).with_prunable([3] * 8), (32, 32, 3)),
]
# The prunable groups the hand-written plan has no entry for: residual streams (WRN, ResNet),
# DenseNet's concatenated segments (stem, every layer's growth, every transition), each named
# after the first conv (in program order) producing it. The plan prunes only the inner widths.
EXTRA = {
    'wrn': {'stem', 'block1/conv2', 'block2/conv2'},
    'densenet_bc': {'stem', 'trans0/conv', 'trans1/conv'} | {
        f'dense{b}_layer{l}/conv2' for b in range(3) for l in range(2)},
    'resnet50': {'stem', 'block0/conv3', 'block3/conv3', 'block7/conv3', 'block13/conv3'},
    'resnet18': {'stem', 'block2/conv2', 'block4/conv2', 'block6/conv2'},
}


def _abstract(spec, shape):
  model = models.build(spec, 10)
  return model, jax.eval_shape(lambda k: models.variables(model, k, shape), jax.random.key(0))


def hand_entries(spec):
  """{prunable name: {(leaf path, axis)}} from `prune.slicing_plan`, every tensor it slices."""
  tag = {name: np.array([i]) for i, name in enumerate(spec.prunable_names)}
  out = {name: set() for name in spec.prunable_names}
  for module, slices in prune.slicing_plan(spec, tag).items():
    for axis, idx in slices:
      name = spec.prunable_names[int(idx[0])]
      if axis == 0:  # a BN: its four vectors
        out[name] |= {(('params', *module, 'scale'), 0), (('params', *module, 'bias'), 0),
                      (('batch_stats', *module, 'mean'), 0), (('batch_stats', *module, 'var'), 0)}
      else:
        out[name].add((('params', *module, 'kernel'), axis % 4))
  return out


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('spec, shape', SPECS)
def test_groups_equal_the_hand_written_slicing_plan(spec, shape, train):
  model, variables = _abstract(spec, shape)
  kwargs = {'train': True, 'mutable': ['batch_stats']} if train else {}
  groups = jg.analyze(model.apply, variables, jnp.zeros((2, *shape)), **kwargs)
  for name, entries in hand_entries(spec).items():
    g = groups[name]
    assert g.prunable and g.size == dict(zip(spec.prunable_names, spec.prunable))[name]
    assert all(e.part == '' for e in g.entries), str(g)
    assert {(e.path, e.axis) for e in g.entries} == entries, str(g)
  key = spec.family + (str(spec.depth) if spec.family == 'resnet' else '')
  extra = {g.name for g in groups.prunable} - set(spec.prunable_names)
  assert extra == EXTRA[key]
  # What stays: the image channels and the logits, each frozen with its reason.
  frozen = {g.name: g.frozen_by for g in groups.frozen}
  assert frozen == {'params/stem/kernel:2': ('an input of the model',),
                    'head': ('an output of the model',)}


@pytest.mark.parametrize('spec, shape', SPECS[:3])
def test_compact_slices_exactly_what_prune_shrink_slices(spec, shape):
  model, abstract = _abstract(spec, shape)
  variables = graph_check.noisy_variables(model, jnp.zeros((1, *shape)))
  groups = jg.analyze(model.apply, variables, jnp.zeros((1, *shape)))
  scores = {n: np.random.default_rng(1).uniform(size=w)
            for n, w in zip(spec.prunable_names, spec.prunable)}
  new_spec, keep = prune.select(spec, scores, sum(spec.prunable) // 2)
  assert jg.select(groups, scores, sum(spec.prunable) // 2).keys() == keep.keys()
  for name, kept in jg.select(groups, scores, sum(spec.prunable) // 2).items():
    np.testing.assert_array_equal(kept, keep[name])
  small = jg.compact(groups, variables, keep,
                     factory=lambda w: models.build(
                         spec.with_prunable([w[n] for n in spec.prunable_names]), 10))
  want = {'params': prune.shrink(variables['params'], spec, keep),
          'batch_stats': prune.shrink(variables['batch_stats'], spec, keep)}
  if min(new_spec.prunable) > 0:  # shrink also drops emptied modules; compact keeps 0-size leaves
    assert jax.tree.structure(small.variables) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, small.variables, want)
  assert small.module.spec == new_spec


def test_compacted_wrn_gives_the_masked_wrns_logits():
  spec, shape = SPECS[0]
  model = models.build(spec, 10)
  x = np.random.default_rng(3).standard_normal((3, *shape)).astype(np.float32)
  variables = graph_check.noisy_variables(model, x)
  names = {}

  def factory(w):  # residual streams are fixed by the spec's stage widths: prune inner only
    names.update(w)
    return models.build(spec.with_prunable([w[n] for n in spec.prunable_names]), 10)

  groups = jg.analyze(model.apply, variables, x)
  keep = {n: k for n, k in graph_check.random_keep(groups, 0).items()
          if n in spec.prunable_names}
  masked = jax.tree.map(jnp.multiply, variables, jg.masks(groups, keep))
  small = jg.compact(groups, variables, keep, factory=factory)
  np.testing.assert_allclose(small.module.apply(small.variables, x), model.apply(masked, x),
                             atol=1e-5, rtol=1e-5)
  assert names['block0/conv1'] == len(keep['block0/conv1'])


def test_optimizer_state_is_sliced_like_the_params():
  import optax  # pylint: disable=g-import-not-at-top
  spec, shape = SPECS[0]
  model = models.build(spec, 10)
  variables = graph_check.noisy_variables(model, jnp.zeros((1, *shape)))
  groups = jg.analyze(model.apply, variables, jnp.zeros((1, *shape)))
  opt_state = optax.sgd(0.1, momentum=0.9).init(variables['params'])
  opt_state = jax.tree.map(lambda v: v + jnp.arange(v.size, dtype=v.dtype).reshape(v.shape),
                           opt_state)
  keep = {'block1/conv1': np.array([0, 5, 7])}
  small = jg.compact(groups, variables, keep, opt_state=opt_state)
  trace = lambda s: s[0].trace['block1']
  np.testing.assert_array_equal(trace(small.opt_state)['conv1']['kernel'],
                                trace(opt_state)['conv1']['kernel'][..., keep['block1/conv1']])
  np.testing.assert_array_equal(trace(small.opt_state)['bn2']['scale'],
                                trace(opt_state)['bn2']['scale'][keep['block1/conv1']])
  assert small.variables['batch_stats']['block1']['bn2']['var'].shape == (3,)
  assert small.widths['block1/conv1'] == 3 and small.widths['block0/conv1'] == 16


def test_printed_groups_name_leaves_axes_and_reasons():
  spec, shape = SPECS[0]
  model, variables = _abstract(spec, shape)
  text = str(jg.analyze(model.apply, variables, jnp.zeros((2, *shape))))
  assert text.startswith('8 channel groups: 6 prunable (224 channels), 2 frozen')
  assert ('block0/conv1: 16 channels, prunable\n    params/block0/conv1/kernel axis 3\n'
          '    batch_stats/block0/bn2/var axis 0\n') in text
  assert 'params/stem/kernel:2: 1 channel, frozen: an input of the model' in text
  assert 'head: 10 channels, frozen: an output of the model' in text


# Errors ----------------------------------------------------------------------------------------

def test_selecting_or_pruning_a_frozen_group_is_an_error_naming_it():
  spec, shape = SPECS[0]
  model, variables = _abstract(spec, shape)
  groups = jg.analyze(model.apply, variables, jnp.zeros((2, *shape)))
  with pytest.raises(UsageError, match="group 'head' is frozen \\(an output of the model\\)"):
    jg.select(groups, {'head': np.zeros(10)}, 1)
  with pytest.raises(UsageError, match="group 'head' is frozen"):
    jg.masks(groups, {'head': [0, 1]})
  with pytest.raises(UsageError, match="keep names 'block9/conv1', which is no group"):
    jg.compact(groups, variables, {'block9/conv1': [0]})
  with pytest.raises(UsageError, match='cannot prune 17 channels: the scored groups hold 16'):
    jg.select(groups, {'block0/conv1': np.zeros(16)}, 17)
  with pytest.raises(UsageError, match=r"scores\['block0/conv1'\] has shape \(3,\)"):
    jg.select(groups, {'block0/conv1': np.zeros(3)}, 1)


class _Frozen(nn.Module):
  """Every channel meets a softmax over channels, then the logits."""

  @nn.compact
  def __call__(self, x, train=False):
    x = jax.nn.softmax(nn.Conv(4, (3, 3), name='conv')(x), axis=-1)
    return nn.Dense(3, name='head')(x.mean(axis=(1, 2)))


def test_a_model_with_nothing_prunable_is_an_error():
  x = jnp.zeros((2, 8, 8, 1))
  model = _Frozen()
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  groups = jg.analyze(model.apply, variables, x)
  assert 'reduce_max at _Frozen' in groups['conv'].frozen_by[0]
  with pytest.raises(UsageError, match='no channel group of this model can be pruned'):
    jg.select(groups, {}, 0)
