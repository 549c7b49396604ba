"""Fan-out: a study as several jobs sharing one workdir (`study.shard`, `study.only`), and the
report step that reads what they have finished (`study.report_only`).

Every run of a study has a folder relative to the workdir (`base/seed0`,
`prune_fisher/seed1`, `arms/reduced/wrn_width_budget90000/seed2`, ...). The study lists its runs
in three stages, in the same order in every job:

  A  the base networks, then the reduced networks (neither needs another run)
  B  the prune runs (each needs its base network)
  C  scratch, Scratch-B and copycat runs (they need the main criterion's prune runs)

With `study.shard='i/n'` a job trains the runs at positions p of each stage with p % n == i;
with `study.only=<glob>` it trains the runs whose folder matches the glob (fnmatch; both may be
given). Every run belongs to one job, so concurrent jobs never write the same run folder. A job
that needs a run another job trains (a prune run's base, the prune runs behind stage C) waits
for it to finish, looking every `study.poll_seconds`, for at most `study.wait_hours`. Stage A
needs nothing, so n jobs started together never wait on each other in a circle.
"""
import collections
import fnmatch
import os
import re
import time

from jaxbud import metrics as metrics_lib
from jaxbud.errors import UsageError

# Study fields that only say which job runs what; every job of one study may differ in them.
FAN_OUT_FIELDS = ('shard', 'only', 'report_only', 'poll_seconds', 'wait_hours', 'dry_run')


def parse_shard(text: str) -> tuple[int, int] | None:
  """'i/n' -> (i, n); '' -> None."""
  if not text:
    return None
  m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(text))
  if not m or not 0 <= int(m[1]) < int(m[2]):
    raise UsageError(f"study.shard must be 'i/n' with 0 <= i < n (e.g. '0/4'), got {text!r}")
  return int(m[1]), int(m[2])


class Jobs:
  """Which of a study's runs this job trains, and waiting for the ones other jobs train."""

  def __init__(self, scfg):
    self.shard = parse_shard(scfg.get('shard', ''))
    self.only = scfg.get('only', '')
    self.report_only = bool(scfg.get('report_only', False))
    self.poll_seconds = float(scfg.get('poll_seconds', 30.0))
    self.wait_hours = float(scfg.get('wait_hours', 48.0))
    if self.poll_seconds <= 0 or self.wait_hours <= 0:
      raise UsageError('study.poll_seconds and study.wait_hours must be > 0, got '
                       f'{self.poll_seconds} and {self.wait_hours}')
    if self.report_only and (self.shard or self.only):
      raise UsageError('study.report_only trains nothing; leave study.shard and study.only '
                       'empty with it')
    self._next = collections.Counter()  # stage -> position of its next run
    self.trained, self.elsewhere, self.unfinished = [], [], []

  @property
  def whole(self) -> bool:
    """Whether this job runs the whole study (no shard, glob or report step)."""
    return not (self.shard or self.only or self.report_only)

  def name(self) -> str:
    parts = ([f'shard {self.shard[0]}/{self.shard[1]}'] if self.shard else []) + (
        [f'only {self.only!r}'] if self.only else [])
    return ', '.join(parts) or ('report step' if self.report_only else 'whole study')

  def selects(self, position: int, rel: str) -> bool:
    if self.report_only:
      return False
    if self.shard and position % self.shard[1] != self.shard[0]:
      return False
    return not self.only or fnmatch.fnmatchcase(rel, self.only)

  def claim(self, stage: str, rel: str) -> bool:
    """Whether this job trains `rel`, the next distinct run of `stage`. Call it once per run,
    in the study's order (every job then agrees on the positions)."""
    position = self._next[stage]
    self._next[stage] += 1
    return self.selects(position, rel)

  def peek(self, stage: str, rels) -> list[bool]:
    """claim() of the next runs `rels` of `stage`, without taking their positions."""
    start = self._next[stage]
    return [self.selects(start + i, rel) for i, rel in enumerate(rels)]

  def wait(self, done_path: str, rel: str):
    """Blocks until another job has finished `rel` (its `done_path` exists)."""
    t0 = last = time.monotonic()
    metrics_lib.log(f'{self.name()}: waiting for {rel}, which another job trains')
    while not os.path.exists(done_path):
      now = time.monotonic()
      if now - t0 > self.wait_hours * 3600:
        raise UsageError(f'waited {self.wait_hours:g} h for {rel}, which another job of this '
                         'study trains; start that job (or raise study.wait_hours)')
      if now - last >= 600:
        metrics_lib.log(f'{self.name()}: still waiting for {rel} '
                        f'({metrics_lib.format_seconds(now - t0)})')
        last = now
      time.sleep(self.poll_seconds)

  def summary(self) -> str:
    lines = [f'{self.name()}: trained or reused {len(self.trained)} runs here; '
             f'{len(self.elsewhere)} finished by other jobs; {len(self.unfinished)} not finished']
    lines += [f'  trained here: {rel}' for rel in self.trained]
    lines += [f'  not finished: {rel}' for rel in self.unfinished]
    return '\n'.join(lines)
