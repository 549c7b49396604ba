"""The criteria researchers compare, on digits: Fisher, Taylor, BN scale, L1 and random.

Every network trains as in configs/study_digits.py (WRN-16-1, 10 epochs) plus network slimming's
sparsity penalty (`train.bn_l1=1e-4`, Liu et al.'s CIFAR value for VGG), which BN-scale pruning
relies on; the other criteria prune the same base networks. Three base networks, each pruned
by every criterion to 120k and 90k parameters (one channel every 5 steps); the report's
"Criteria" section compares each criterion with Fisher at both budgets (paired intervals,
Holm), and error_vs_params.png draws every prune run's trajectory. Reduced networks and
Scratch-B are left out; the pruned-from-scratch and copycat arms train one seed each.

  python -m launch.study --config=configs/study_criteria_digits.py --workdir=runs/criteria_digits

`study.plan` prints 21 runs and 9,855 training steps.
"""
from configs import study_digits


def compare_criteria(c):
  """`c`, a study config, turned into the criteria comparison: every network trained with
  network slimming's penalty, five criteria from three base networks, no reduced networks or
  Scratch-B, one seed per from-scratch point (the Fashion-MNIST config uses it too)."""
  c.train.bn_l1 = 1e-4
  c.study.update(criteria=('fisher', 'taylor', 'bn_scale', 'l1', 'random'),
                 main_criterion='fisher', reduced=(), depths=(), scratch_b=False, seeds=(0,),
                 prune_seeds=(0, 1, 2))
  return c


def get_config(arg=None):
  return compare_criteria(study_digits.get_config(arg))
