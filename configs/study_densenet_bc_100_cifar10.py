"""The paper's DenseNet-BC-100 (k=12) study on CIFAR-10, for accelerators.

`study.plan` (the dry run) prints 95 runs and 26,388,368 training steps: 2 base runs and 45
reduced runs of 234,600 steps (300 epochs at batch 64), 6 prune runs of about 193,700 to
201,900, 15 Scratch-E and 12 copycat runs of 234,600, and 15 Scratch-B runs of 300,742 to
902,227 steps. It has not been run.

  python -m launch.study --config=configs/study_densenet_bc_100_cifar10.py --workdir=runs/dn \
      --config.study.dry_run=True
"""
from configs import prune_densenet_bc_100_cifar10
from configs import sections


def get_config(arg=None):
  c = prune_densenet_bc_100_cifar10.get_config(arg)
  c.prune.stop_after_last_budget = True
  c.study = sections.study_section(
      budgets=(600_000, 500_000, 400_000, 300_000, 200_000),
      reduced=('densenet_depth', 'densenet_growth', 'densenet_bottleneck'),
      depths=(40, 52, 64, 76, 88), copycat_budget=400_000, seeds=(0, 1, 2), prune_seeds=(0, 1),
      criteria=('fisher', 'l1', 'l1_signed'), scratch_b=True,
      reference_error=4.5, reference='DenseNet-BC-100 (k=12) on CIFAR-10, 4.51% (Huang et al.)')
  return c
