"""Preemption (SIGTERM) and divergence (NaN/Inf) guards shared by the training and prune loops.

A preempted TPU VM or a batch scheduler sends SIGTERM and kills the job a little later. The
loops poll `Preemption.requested(step)` after every step; when it turns true they save a
checkpoint of the current step and raise `Preempted`, which the launchers turn into exit status
143 (128 + SIGTERM). Re-running the same command resumes from that checkpoint.

With several processes every host must stop at the same step, because saving is collective.
There JAX's own preemption sync point (the distributed runtime's coordination service, which
receives the signal) decides; in a single process a SIGTERM handler sets a flag.

A launcher (jaxbud.cli.run) holds `handling_sigterm()` for its whole life, so a SIGTERM that
lands outside a loop (while setting up, in the final evaluation, between a study's runs) also
ends in exit status 143: there it raises `Preempted` at once, since everything worth keeping is
already in the last checkpoint. Library code that calls a loop without a launcher gets the
handler for the loop only.
"""
import contextlib
import math
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np

from jaxbud import parallel


class Preempted(Exception):
  """The run saved a checkpoint after SIGTERM and stopped; re-run the command to resume."""


class NonFiniteError(FloatingPointError):
  """Loss or parameters became NaN/Inf; the run stopped without saving past its last good step."""


# The single-process SIGTERM handler's state (signal handlers run in the main thread).
_flag = threading.Event()  # set by SIGTERM; the loops poll it
_polling = 0  # loops (Preemption contexts) now running
_installed = None  # (handler it replaced,) while a handling_sigterm() context is open


def _on_sigterm(*_):
  _flag.set()
  if not _polling:
    raise Preempted('SIGTERM outside a training loop: nothing new to save (the last checkpoint '
                    'stands); run the same command again to resume')


@contextlib.contextmanager
def handling_sigterm(enabled: bool = True):
  """SIGTERM handled while open (nested contexts share the outermost's handler): inside a loop
  (`Preemption`) it sets the flag the loop polls, elsewhere it raises `Preempted`.

  Only in the main thread; `enabled=False` (a multi-host run, where the distributed runtime
  receives SIGTERM) leaves the signal alone.
  """
  global _installed
  if (not enabled or _installed is not None or
      threading.current_thread() is not threading.main_thread()):
    yield
    return
  _flag.clear()
  _installed = (signal.signal(signal.SIGTERM, _on_sigterm),)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, _installed[0])
    _installed = None


class Preemption:
  """Context manager around a loop: SIGTERM -> `requested(step)` becomes true (the same step on
  every host)."""

  def __init__(self):
    self._handling = None

  def __enter__(self):
    global _polling
    if jax.process_count() == 1:
      self._handling = handling_sigterm()
      self._handling.__enter__()
      _polling += 1
    return self

  def __exit__(self, *exc):
    global _polling
    if self._handling is not None:
      _polling -= 1
      self._handling.__exit__(*exc)
      self._handling = None

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return _flag.is_set()


def stop(what: str, ckpts, writer):
  """After SIGTERM, once the state is saved: finishes the writes and raises Preempted."""
  ckpts.wait()
  ckpts.close()
  writer.close()
  raise Preempted(f'SIGTERM: saved {what} in {ckpts.directory}; run the same command again to '
                  'resume')


def all_finite(tree) -> bool:
  """Whether every float leaf of `tree` is finite, checked on the host (no program to compile
  per architecture; the loop calls it before a checkpoint, when the params are copied anyway)."""
  return all(bool(np.all(np.isfinite(parallel.host_copy(x)))) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact))


def check_finite(losses, first_step: int, params, where: str, last_good):
  """Raises NonFiniteError if any of `losses` (steps first_step...) or `params` (unless None)
  is NaN/Inf. `last_good()` says where the last good checkpoint is (called only on failure).
  """
  bad = [first_step + i for i, x in enumerate(losses) if not math.isfinite(float(x))]
  params_ok = bad or params is None or all_finite(params)
  if not bad and params_ok:
    return
  last = first_step + len(losses) - 1
  what = (f'train loss first non-finite at step {bad[0]}' if bad
          else 'parameters non-finite (loss still finite)')
  raise NonFiniteError(f'{where} diverged between steps {first_step} and {last}: {what}. '
                       f'Nothing was saved after it; {last_good()}. Lower the learning rate '
                       f'(or use another seed) and re-run.')


def pack_pending(pending: list) -> dict:
  """Per-step metrics not yet averaged into a log line, as JSON for a checkpoint's meta.

  Exact: every float32 is a float64, and unpacking gives float32 back, so the log line after a
  resume averages the same numbers as an uninterrupted run.
  """
  keys = pending[0] if pending else {}
  return {k: [float(np.float32(m[k])) for m in pending] for k in keys}


def unpack_pending(packed: dict | None) -> list:
  if not packed:
    return []
  n = len(next(iter(packed.values())))
  return [{k: np.float32(v[i]) for k, v in packed.items()} for i in range(n)]
