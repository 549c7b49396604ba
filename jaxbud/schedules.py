"""Pruning schedules: which live channels a prune run removes, and when.

`prune.schedule` names one of them:

- a round rule (`iterative`, the paper's, by default): after every round of `prune_every`
  fine-tuning steps the rule picks the channels to remove from the round's ranking. Research
  code adds its own:

      @schedules.register('my_schedule')
      def my_schedule(r: schedules.Round):
        return r.ranked[:max(1, r.live // 50)]  # 2% of the live channels a round

- `one_shot`: the criterion scores the base network once (over its first `prune_every`
  fine-tuning steps); for each budget the base network is cut to that budget at once with
  `cut`, then fine-tuned for `prune.finetune_epochs`.

Allocation is global lowest-first unless `prune.per_layer_ratio` r > 0 (Li et al. 2017,
"Pruning Filters for Efficient ConvNets"): every layer then loses the same fraction of its
base width, its own lowest-scoring channels, r of it per round (iterative) or the smallest
multiple of r that meets the budget (one-shot); widths are w - round(min(1, k r) w).
"""
import collections
import dataclasses
from typing import Callable

import numpy as np

from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud.errors import UsageError

ONE_SHOT = 'one_shot'


@dataclasses.dataclass(frozen=True)
class Round:
  """What a round rule sees after a round of fine-tuning.

  index: the round (0 for the first removal); spec: the current spec (masked channels still in
  it); ranked: the live channels as (layer name, channel, score), least salient first (scores
  normalised as `prune.normalise` says); alive: {name: (C,) bool}; base_widths: {name: width of
  the layer in the base network}; options: the prune config section.
  """
  index: int
  spec: spec_lib.Spec
  ranked: list
  alive: dict
  base_widths: dict
  options: object

  @property
  def live(self) -> int:
    return len(self.ranked)


_RULES: dict[str, Callable[[Round], list]] = {}


def register(name: str):
  """Decorator adding a round rule `fn(Round) -> [(name, channel, ...), ...]` (the channels to
  remove, each a live one, e.g. a slice of `ranked`) under `name`."""
  if name == ONE_SHOT:
    raise ValueError(f'{ONE_SHOT!r} is a built-in schedule, not a round rule')

  def deco(fn):
    _RULES[name] = fn
    return fn

  return deco


def names() -> list[str]:
  return sorted(_RULES) + [ONE_SHOT]


def get(name: str) -> Callable[[Round], list]:
  """The round rule `name` (UsageError if unknown; `one_shot` has none)."""
  if name not in _RULES:
    raise UsageError(f'unknown prune.schedule {name!r}; expected one of {names()}')
  return _RULES[name]


def budget_unit(pcfg) -> str:
  """What a prune section's budgets count (`prune.budget_unit`; params when it has none)."""
  return pcfg.get('budget_unit', 'params')


def check_section(pcfg):
  """The schedule fields of a prune section: a known schedule, a ratio in [0, 1), one
  allocation (a per-layer ratio removes its own count per round), a budget unit."""
  schedule = pcfg.get('schedule', 'iterative')
  if schedule != ONE_SHOT:
    get(schedule)
  ratio = pcfg.get('per_layer_ratio', 0.0)
  if not 0 <= ratio < 1:
    raise UsageError(f'prune.per_layer_ratio must be in [0, 1) (0: global ranking), got {ratio}')
  if ratio and pcfg.get('channels_per_round', 1) != 1:
    raise UsageError('prune.per_layer_ratio and prune.channels_per_round both set the channels '
                     'a round removes; leave channels_per_round at 1')
  if schedule == ONE_SHOT and pcfg.get('finetune_epochs', 1.0) <= 0:
    raise UsageError(f'prune.finetune_epochs must be > 0, got {pcfg.finetune_epochs}')
  spec_lib.Size(budget_unit(pcfg))  # an unknown unit is a usage error


def ratio_widths(widths, fraction: float, minimum: int = 0) -> list[int]:
  """Each layer's width after removing round(min(1, fraction) w) of its w channels (at least
  `minimum` left, a family's `min_width`)."""
  f = min(1.0, fraction)
  return [max(min(w, minimum), w - int(round(f * w))) for w in widths]


def _lowest(ranked, counts: dict) -> list:
  """The `counts[name]` least salient live channels of each layer, in ranking order."""
  left, out = dict(counts), []
  for row in ranked:
    if left.get(row[0], 0) > 0:
      out.append(row)
      left[row[0]] -= 1
  return out


@register('iterative')
def iterative(r: Round) -> list:
  """The paper's schedule: the `channels_per_round` (1) globally least salient channels; with
  `per_layer_ratio` r, each layer's lowest, down to w - round(min(1, (index + 1) r) w)."""
  ratio = r.options.get('per_layer_ratio', 0.0)
  if not ratio:
    return r.ranked[:r.options.get('channels_per_round', 1)]
  names_ = r.spec.prunable_names
  target = dict(zip(names_, ratio_widths([r.base_widths[n] for n in names_],
                                         (r.index + 1) * ratio, getattr(r.spec, 'min_width', 0))))
  live = {n: int(np.sum(r.alive[n])) for n in names_}
  return _lowest(r.ranked, {n: max(0, live[n] - target[n]) for n in names_})


def cut(spec: spec_lib.Spec, scores: dict, budget: int, size: spec_lib.Size,
        per_layer_ratio: float = 0.0) -> list:
  """One-shot: the channels (name, channel, score) to remove from `spec` so that its size is at
  most `budget`: the fewest in global ranking order, or with `per_layer_ratio` r the smallest
  k with every layer cut to w - round(min(1, k r) w), each layer's lowest first."""
  ranked = prune.rank(spec, scores)
  names_ = spec.prunable_names
  if per_layer_ratio:
    k = 1
    while True:
      widths = ratio_widths(spec.prunable, k * per_layer_ratio, getattr(spec, 'min_width', 0))
      if size(spec.with_prunable(widths)) <= budget or k * per_layer_ratio >= 1:
        break
      k += 1
    return _lowest(ranked, {n: w - v for n, w, v in zip(names_, spec.prunable, widths)})
  base = dict(zip(names_, spec.prunable))

  def size_without(i):  # the size with the first i ranked channels removed
    gone = collections.Counter(row[0] for row in ranked[:i])
    return size(spec.with_prunable(base[n] - gone[n] for n in names_))

  # The shortest prefix that meets the budget, by bisection: a size never grows as channels go.
  lo, hi = 0, len(ranked)
  while lo < hi:
    mid = (lo + hi) // 2
    if size_without(mid) <= budget:
      hi = mid
    else:
      lo = mid + 1
  return ranked[:lo]
