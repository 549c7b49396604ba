"""The one loop around a pure step, shared by training and prune-and-tune runs.

A run is a `Task`: a pure jitted step over (state, batch), plus what happens every `period`
steps (an epoch of training: evaluation; a prune round: evaluation, snapshots, a removal). The
loop does everything else, the same way for every run:

- per-step metrics stay on the device until a log point, where they are averaged, written to
  metrics.jsonl / TensorBoard and summarised in a progress line;
- the NaN/Inf guard runs before anything is written (a log line, a period's hook, a
  checkpoint), so a diverged run never saves past its last good step;
- checkpoints at the task's cadence and at the end; each carries the metrics not yet logged
  and the run's elapsed seconds, so a resumed run logs and times exactly as an uninterrupted
  one;
- SIGTERM (preemption) saves the current step, mid-period if need be, and raises
  `preempt.Preempted` (exit status 143 in the launchers).

A checkpoint at step s holds the state after every hook of steps <= s, so resuming at s
re-runs nothing. Elapsed seconds add up across resumes (work lost to a kill is not counted).
"""
import time
from typing import Protocol

import jax
import numpy as np

from jaxbud import metrics as metrics_lib
from jaxbud import preempt


class Task(Protocol):
  """What a run supplies to `Loop.run`."""

  def step(self, state, batch):
    """The current jitted step: (state, batch) -> (state, metrics with 'train_loss')."""

  def end_period(self, state, done: int):
    """After the NaN check at the end of every period: -> (state, stop: bool)."""

  def log_line(self, done: int, means: dict) -> tuple[str, dict]:
    """(progress-line suffix, extra scalars for metrics.jsonl) at a log point."""

  def save(self, done: int, state, meta: dict):
    """Writes checkpoint `done` of `state` with the loop's `meta` (plus the task's own)."""

  def params(self, state):
    """The parameters the NaN/Inf guard checks."""


class Loop:
  """Drives one `Task` over steps [start, total); see the module docstring.

  period: steps per epoch or prune round. log_every: steps between log points (every period
  end is one too when `log_period_ends`). checkpoint_every: steps between checkpoints (a
  multiple of `period`). unit: (name, steps) in which the progress line counts.
  """

  def __init__(self, *, ckpts, writer, where: str, total: int, period: int, log_every: int,
               checkpoint_every: int, log_period_ends: bool = True, unit=('step', 1),
               restored_meta: dict | None = None):
    self.ckpts, self.writer, self.where = ckpts, writer, where
    self.total, self.period, self.log_every = total, period, log_every
    self.checkpoint_every, self.log_period_ends = checkpoint_every, log_period_ends
    self.unit_name, self.unit = unit
    meta = restored_meta or {}
    self.pending = preempt.unpack_pending(meta.get('pending'))
    self._checked = len(self.pending)
    self._elapsed0, self._t0 = float(meta.get('elapsed_s', 0.0)), time.perf_counter()

  def elapsed(self) -> float:
    """Seconds this run has worked so far, earlier (resumed-from) processes included."""
    return self._elapsed0 + time.perf_counter() - self._t0

  def meta(self) -> dict:
    """The loop's part of a checkpoint's meta (call after `check`)."""
    return {'pending': preempt.pack_pending(self.pending), 'elapsed_s': self.elapsed()}

  def check(self, task: Task, state, done: int, params: bool = False):
    """The NaN/Inf guard over the losses since the last check and, with `params` (before every
    checkpoint, so none holds NaN/Inf), the current parameters. A non-finite parameter makes
    the next step's loss non-finite, so the losses alone catch it everywhere else."""
    self.pending = jax.device_get(self.pending)
    new = self.pending[self._checked:]
    preempt.check_finite([m['train_loss'] for m in new], done - len(new) + 1,
                         task.params(state) if params else None, self.where,
                         self.ckpts.describe_latest)
    self._checked = len(self.pending)

  def _flush(self, task: Task, done: int, progress):
    means = jax.tree.map(lambda *xs: float(np.mean(xs)), *self.pending)
    self.pending, self._checked = [], 0
    line, extra = task.log_line(done, means)
    means['steps_per_s'] = progress.rate(done // self.unit) * self.unit
    metrics_lib.log(f'{progress.tick(done // self.unit)}  {line}')
    self.writer.write(done, {**means, **extra})

  def run(self, task: Task, state, batches, start: int):
    """Steps start..total-1 over `batches` ((step, batch) pairs); returns (state, done)."""
    progress = metrics_lib.Progress(-(-self.total // self.unit), start // self.unit,
                                    unit=self.unit_name)
    done = start
    with preempt.Preemption() as preemption:
      for step, batch in batches:
        state, m = task.step(state, batch)
        self.pending.append(m)
        done, stop = step + 1, False
        period_end = done % self.period == 0 or done == self.total
        if (done % self.log_every == 0 or done == self.total or
            (self.log_period_ends and period_end)):
          self.check(task, state, done)
          self._flush(task, done, progress)
        if period_end:
          self.check(task, state, done)
          state, stop = task.end_period(state, done)
        last = stop or done == self.total
        if last and self.pending:  # a task that stops early flushes what it has
          self.check(task, state, done)
          self._flush(task, done, progress)
        saved = False
        if done % self.checkpoint_every == 0 or last:
          self.check(task, state, done, params=True)
          task.save(done, state, {**self.meta(), 'finished': last})
          saved = True
        if last:
          break
        if preemption.requested(done):
          if not saved:
            self.check(task, state, done, params=True)
            task.save(done, state, self.meta())
          preempt.stop(f'step {done} of {self.total}', self.ckpts, self.writer)
    return state, done
