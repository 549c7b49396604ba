"""Checkpoints carry their spec: a smaller (pruned) network restores without knowing its shape."""
import jax
import numpy as np
import pytest

from configs import default
from jaxbud import checkpoint as ckpt_lib
from jaxbud import models
from jaxbud import spec as spec_lib
from jaxbud import train


def test_restore_a_pruned_network_from_its_checkpoint_alone(tmp_path):
  spec = spec_lib.wrn(10, 1, in_channels=1).with_prunable((5, 0, 9))
  model = models.build(spec, 10)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=10)
  state = train.create_state(model, tx, jax.random.key(1), (8, 8, 1))
  state = state.replace(step=state.step + 7)
  ckpts = ckpt_lib.Checkpoints(tmp_path / 'ckpt', keep=2)
  ckpts.save(7, state, spec, {'epoch': 3})
  ckpts.wait()

  # A new reader knows only the directory.
  reader = ckpt_lib.Checkpoints(tmp_path / 'ckpt')
  assert reader.latest_step() == 7
  restored_spec = reader.restore_spec()
  assert restored_spec == spec and restored_spec.inner == (5, 0, 9)
  template = train.create_state(models.build(restored_spec, 10), tx, jax.random.key(0), (8, 8, 1))
  restored, meta = reader.restore(ckpt_lib.abstract(template))
  assert meta == {'epoch': 3} and int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, restored.opt_state, state.opt_state)
  assert 'conv1' not in restored.params['block1']  # the zero-width block kept no inner conv


def test_keeps_only_the_latest_checkpoints(tmp_path):
  spec = spec_lib.wrn(10, 1, in_channels=1)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=10)
  state = train.create_state(models.build(spec, 10), tx, jax.random.key(1), (8, 8, 1))
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=2)
  for step in (1, 2, 3):
    ckpts.save(step, state, spec)
  ckpts.wait()
  assert ckpts.manager.all_steps() == [2, 3]


def test_a_save_orbax_declines_is_an_error(tmp_path):
  # Orbax skips a step at or below the newest saved one; keeping the older state silently
  # would hide a stale snapshot, so Checkpoints.save raises instead.
  spec = spec_lib.wrn(10, 1, in_channels=1)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=10)
  state = train.create_state(models.build(spec, 10), tx, jax.random.key(1), (8, 8, 1))
  ckpts = ckpt_lib.Checkpoints(tmp_path, keep=2)
  ckpts.save(5, state, spec)
  ckpts.wait()
  with pytest.raises(RuntimeError, match=r'checkpoint step 5 was not saved .*newest saved step '
                                         r'is 5'):
    ckpts.save(5, state, spec)
  with pytest.raises(RuntimeError, match='checkpoint step 3 was not saved'):
    ckpts.save(3, state, spec)
