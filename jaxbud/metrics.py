"""Metrics as JSON lines and TensorBoard events in the workdir, and a progress line with ETA."""
import json
import os
import time

from absl import logging
import jax

from jaxbud.errors import UsageError


class Writer:
  """Appends {'step': s, **scalars} to workdir/metrics.jsonl and TensorBoard events (process 0)."""

  def __init__(self, workdir, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.enabled and resume_step is not None and os.path.exists(self.path):
      # Lines after the restored step were written by the killed run; they will be rewritten.
      with open(self.path) as f:
        kept = [l for l in f if l.strip() and json.loads(l)['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(kept)
    self._tb_dir = os.path.join(workdir, 'tensorboard')

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    if self._tb is None:
      # Made at the first write, not before: tensorboardX starts its writer thread only then.
      # A run that stops before writing anything (a diverged first window) would otherwise
      # leave that start to tensorboardX's exit handler, which Python 3.12 refuses at
      # interpreter shutdown ("can't create new thread").
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(self._tb_dir)
    scalars = {k: float(v) for k, v in scalars.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read(workdir) -> list[dict]:
  """The metrics.jsonl records of a run."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


def make_workdir(workdir) -> None:
  """Creates `workdir` (and parents), or raises a ValueError saying why it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UsageError(f'cannot create workdir {workdir}: {e.strerror or e}') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UsageError(f'workdir {workdir} is not writable')


def format_seconds(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


class Progress:
  """Rate and ETA over `total` units of work, measured from construction (compilation included)."""

  def __init__(self, total: int, start: int = 0, unit: str = 'step'):
    self.total, self.unit = total, unit
    self._t0, self._n0 = time.perf_counter(), start

  def rate(self, done: int) -> float:
    return (done - self._n0) / max(time.perf_counter() - self._t0, 1e-9)

  def tick(self, done: int) -> str:
    rate = self.rate(done)
    eta = format_seconds((self.total - done) / rate) if rate > 0 else '?'
    return (f'{self.unit} {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%), '
            f'{rate:.2f} {self.unit}s/s, ETA {eta}')


def log(msg: str):
  if jax.process_index() == 0:
    logging.info(msg)
