"""Fisher prune-and-tune of the default digits WRN (train it first with configs/default.py).

One channel every 5 steps (320 images, a fifth of an epoch, as the paper's 100 CIFAR steps are a
quarter) at the base schedule's final lr (4e-3), test error every 10 rounds, tuned snapshots at
150k, 120k and 90k parameters.

  python -m launch.train --config=configs/default.py --workdir=/tmp/jaxbud/default
  python -m launch.prune --config=configs/prune_digits.py --workdir=/tmp/jaxbud/prune \
      --config.prune.base_workdir=/tmp/jaxbud/default
"""
from configs import default
from configs import sections


def get_config(arg=None):
  c = default.get_config(arg)
  c.prune = sections.prune_section(
      prune_every=5, rounds=200, budgets=(150_000, 120_000, 90_000), eval_every_rounds=10,
      stop_after_last_budget=True, compact_every=64, batch_size=64, log_every_rounds=20,
      checkpoint_every_rounds=40)
  return c
