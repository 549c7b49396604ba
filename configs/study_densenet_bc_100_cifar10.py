"""The paper's DenseNet-BC-100 (k=12) study on CIFAR-10 (for a GPU/TPU machine)."""
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
