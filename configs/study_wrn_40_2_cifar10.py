"""The paper's WRN-40-2 study on CIFAR-10 (for a GPU/TPU machine: ~40 full trainings).

Base WRN-40-2 (200 epochs), Fisher and L1 prune-and-tune (paper settings), reduced families by
depth (16..34), width and bottleneck multiplier, pruned-from-scratch, copycats, 3 seeds.
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
