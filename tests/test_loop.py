"""The shared loop (jaxbud.loop) on a toy task: cadence, resume bookkeeping, the NaN guard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbud import checkpoint as ckpt_lib
from jaxbud import loop as loop_lib
from jaxbud import metrics as metrics_lib
from jaxbud import preempt
from jaxbud import spec as spec_lib

SPEC = spec_lib.wrn(10, 1)


class Toy:
  """Gradient descent on 0.5 * (w - target)^2; a period of 4 steps; stops when told."""

  def __init__(self, ckpts, lr=0.1, stop_at=None):
    self.ckpts, self.stop_at, self.periods, self.saved = ckpts, stop_at, [], []
    self.step = jax.jit(lambda w, batch: (w - lr * (w - batch), {
        'train_loss': jnp.mean(0.5 * (w - batch) ** 2)}))

  def end_period(self, w, done):
    self.periods.append(done)
    return w, done == self.stop_at

  def log_line(self, done, means):
    return f'loss {means["train_loss"]:.3f}', {'extra': done}

  def save(self, done, w, meta):
    self.saved.append((done, meta.get('finished', False)))
    self.ckpts.save(done, {'w': w}, SPEC, meta)

  def params(self, w):
    return w


def batches(start, stop, value=1.0):
  return ((s, jnp.full((3,), value)) for s in range(start, stop))


def make(tmp_path, total=12, meta=None, **kw):
  ckpts = ckpt_lib.Checkpoints(tmp_path / 'ck', keep=10)
  writer = metrics_lib.Writer(str(tmp_path), resume_step=0 if meta is None else None)
  loop = loop_lib.Loop(ckpts=ckpts, writer=writer, where='toy', total=total, period=4,
                       log_every=3, checkpoint_every=8, restored_meta=meta)
  return loop, Toy(ckpts, **kw), ckpts, writer


def test_cadence_of_periods_logs_and_checkpoints(tmp_path):
  loop, task, ckpts, writer = make(tmp_path)
  w, done = loop.run(task, jnp.zeros(3), batches(0, 12), 0)
  ckpts.wait()
  writer.close()
  assert done == 12 and task.periods == [4, 8, 12]
  assert task.saved == [(8, False), (12, True)]
  recs = metrics_lib.read(tmp_path)
  assert [r['step'] for r in recs] == [3, 4, 6, 8, 9, 12]  # every 3 steps and period ends
  assert all(r['extra'] == r['step'] for r in recs)
  assert float(w[0]) == pytest.approx(1 - 0.9 ** 12)


def test_an_early_stop_flushes_and_saves_as_finished(tmp_path):
  loop, task, ckpts, writer = make(tmp_path, stop_at=4)
  _, done = loop.run(task, jnp.zeros(3), batches(0, 12), 0)
  ckpts.wait()
  writer.close()
  assert done == 4 and task.saved == [(4, True)]
  assert [r['step'] for r in metrics_lib.read(tmp_path)] == [3, 4]


def test_resumed_meta_carries_pending_metrics_and_elapsed_seconds(tmp_path):
  pending = [{'train_loss': np.float32(0.5)}]
  loop, task, ckpts, writer = make(tmp_path, total=8,
                                   meta={'pending': preempt.pack_pending(pending),
                                         'elapsed_s': 100.0})
  assert loop.elapsed() >= 100.0
  loop.run(task, jnp.zeros(3), batches(5, 8), 5)
  ckpts.wait()
  writer.close()
  # The step-6 log point averages the restored step-5 loss with steps 6's.
  rec = metrics_lib.read(tmp_path)[0]
  assert rec['step'] == 6 and rec['train_loss'] == pytest.approx((0.5 + 0.5) / 2)
  _, meta = ckpts.restore({'w': jax.ShapeDtypeStruct((3,), jnp.float32)}, 8)
  assert meta['elapsed_s'] >= 100.0 and meta['finished']


def test_the_nan_guard_stops_before_anything_is_saved(tmp_path):
  loop, task, ckpts, writer = make(tmp_path)
  with pytest.raises(preempt.NonFiniteError, match=r'toy diverged between steps 5 and 6: train loss first non-finite at step 5'):
    loop.run(task, jnp.zeros(3),
             ((s, jnp.full((3,), np.inf if s == 4 else 1.0)) for s in range(12)), 0)
  ckpts.wait()
  writer.close()
  assert task.saved == [] and [r['step'] for r in metrics_lib.read(tmp_path)] == [3, 4]
