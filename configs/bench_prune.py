"""Prune-run cost vs plain training on digits: WRN-16-2, 100 Fisher removals every 10 steps.

  python -m launch.bench_prune --config=configs/bench_prune.py --workdir=/tmp/jaxbud/bench_prune
"""
from configs import prune_digits


def get_config(arg=None):
  c = prune_digits.get_config(arg)
  c.model.widen = 2.0  # WRN-16-2, 691k params, 448 prunable channels
  c.prune.update(rounds=100, prune_every=10, budgets=(), compact_every=32,
                 stop_after_last_budget=False, log_every_rounds=25,
                 checkpoint_every_rounds=50)
  return c
