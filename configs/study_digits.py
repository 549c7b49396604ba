"""The embedded default study: WRN-16-1 on digits, every arm, well under 10 minutes on 2 CPU cores.

Every network trains 10 epochs (lr x0.2 at epochs 5 and 8); two seeds per from-scratch point.

  python -m launch.study            # this config, workdir runs/study_digits
"""
import ml_collections

from configs import prune_digits


def study_section(**overrides):
  s = ml_collections.ConfigDict(dict(
      criteria=('fisher', 'l1'),      # prune-and-tune arms
      main_criterion='fisher',        # its snapshots give the scratch and copycat arms
      budgets=(),                     # parameter counts compared across arms
      reduced=('wrn_depth', 'wrn_width', 'wrn_bottleneck'),
      depths=(16, 22, 28, 34, 40),    # depth families: every depth smaller than the base
      copycat_budget=0,               # the snapshot whose width profile is scaled (a budget)
      scratch_b=False,                # also train Liu et al.'s Scratch-B (epochs x MACs ratio)
      seeds=(0,),                     # from-scratch runs per point (mean and std reported)
      latency_batch_sizes=(1, 128),
      latency_repeats=10,
  ))
  s.update(overrides)
  return s


def get_config(arg=None):
  c = prune_digits.get_config(arg)
  c.prune.update(rounds=224, stop_after_last_budget=True)  # every channel of WRN-16-1
  c.train.update(epochs=10, milestones=(5, 8), eval_every_epochs=10, checkpoint_every_epochs=5)
  c.study = study_section(budgets=(150_000, 120_000, 90_000), depths=(10,),
                          copycat_budget=120_000, seeds=(0, 1))
  return c
