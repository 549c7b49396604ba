"""The paper's WRN-40-2 study on CIFAR-10, for accelerators.

Two base WRN-40-2 (200 epochs each), Fisher, L1 and signed-L1 prune-and-tune from each (paper
settings), reduced families by depth (16..34), width and bottleneck multiplier at six budgets,
Scratch-E, Scratch-B (uncapped) and copycats, 3 seeds per from-scratch point.

`study.plan` (the dry run) prints 107 runs and 12,737,314 training steps: 2 base runs and 48
reduced runs of 78,200 steps, 6 prune runs of about 123,400, 18 Scratch-E and 15 copycat runs of
78,200, and 18 Scratch-B runs of 103,203 to 877,226 steps (x1.32 to x11.22 the epochs). It has
not been run; the README's "The paper's study on accelerators" shows how to split it into jobs.

  python -m launch.study --config=configs/study_wrn_40_2_cifar10.py --workdir=runs/wrn \
      --config.study.dry_run=True
"""
from configs import prune_wrn_40_2_cifar10
from configs import sections


def get_config(arg=None):
  c = prune_wrn_40_2_cifar10.get_config(arg)
  c.prune.stop_after_last_budget = True
  c.study = sections.study_section(
      budgets=(1_700_000, 1_400_000, 1_100_000, 800_000, 500_000, 200_000),
      reduced=('wrn_depth', 'wrn_width', 'wrn_bottleneck'), depths=(16, 22, 28, 34),
      copycat_budget=800_000, seeds=(0, 1, 2), prune_seeds=(0, 1),
      criteria=('fisher', 'l1', 'l1_signed'), scratch_b=True,
      reference_error=5.0,
      reference="WRN-40-2 on CIFAR-10, about 5% (Zagoruyko and Komodakis; the paper's baseline)")
  return c
