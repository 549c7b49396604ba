"""Fisher prune-and-tune of a trained WRN-40-2 on CIFAR-10, the paper's settings.

One channel every 100 steps, 1,300 rounds, SGD momentum 0.9 at a constant lr 8e-4 (the base
schedule's final lr), batch 128, weight decay 5e-4; test error every 10 rounds (the reference
evaluates every round). Tuned snapshots at the parameter budgets below (1.7M down to 0.2M).

  python -m launch.train --config=configs/wrn_40_2_cifar10.py --workdir=runs/wrn_40_2
  python -m launch.prune --config=configs/prune_wrn_40_2_cifar10.py --workdir=runs/prune_wrn \
      --config.prune.base_workdir=runs/wrn_40_2
"""
from configs import sections
from configs import wrn_40_2_cifar10


def get_config(arg=None):
  c = wrn_40_2_cifar10.get_config(arg)
  c.prune = sections.prune_section(
      prune_every=100, rounds=1300, batch_size=128, weight_decay=5e-4,
      budgets=(1_700_000, 1_400_000, 1_100_000, 800_000, 500_000, 200_000))
  return c
