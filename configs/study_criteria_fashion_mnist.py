"""The criteria researchers compare, on Fashion-MNIST: Fisher, Taylor, BN scale, L1 and random.

The Fashion-MNIST counterpart of configs/study_criteria_digits.py. Every network trains as in
configs/study_fashion_mnist.py (WRN-16-1 at 14x14, 6 epochs) plus network slimming's sparsity
penalty (`train.bn_l1=1e-4`, Liu et al.'s CIFAR value for VGG), which BN-scale pruning relies
on; the other criteria prune the same base networks. Three base networks, each pruned by every
criterion to 120k and 90k parameters (one channel every 10 steps); the report's "Criteria"
section compares each criterion with Fisher at both budgets (paired intervals, Holm), and
error_vs_params.png draws every prune run's trajectory. Reduced networks and Scratch-B are left
out; the pruned-from-scratch and copycat arms train one seed each.

  python -m launch.study --config=configs/study_criteria_fashion_mnist.py \
      --workdir=runs/criteria_fashion_mnist

`study.plan` prints 21 runs and 33,834 training steps.
"""
from configs import study_criteria_digits
from configs import study_fashion_mnist


def get_config(arg=None):
  return study_criteria_digits.compare_criteria(study_fashion_mnist.get_config(arg))
