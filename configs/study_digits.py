"""The embedded default study: WRN-16-1 on digits, every arm, under 10 minutes on 2 CPU cores.

Every network trains 10 epochs (lr x0.2 at epochs 5 and 8); Fisher and L1 prune-and-tune one
channel every 5 steps at the base's final lr (4e-3) down to the smallest budget; budgets of
120k and 90k parameters (the base has 175k), and WRN-10-1's own size for the depth family;
three seeds per from-scratch point; Scratch-B on. `study.plan` prints 36 runs and 10,740
training steps; the study took 6 min 54 s on 2 cores of an AMD EPYC (family 23, model 49),
2026-12-07 (README).

  python -m launch.study            # this config, workdir runs/study_digits
"""
from configs import prune_digits
from configs import sections


def get_config(arg=None):
  c = prune_digits.get_config(arg)
  c.prune.update(rounds=224, stop_after_last_budget=True)  # up to every channel of WRN-16-1
  c.train.update(epochs=10, milestones=(5, 8), eval_every_epochs=10, checkpoint_every_epochs=10)
  c.study = sections.study_section(budgets=(120_000, 90_000), depths=(10,),
                                   copycat_budget=120_000, seeds=(0, 1, 2), prune_seeds=(0, 1),
                                   scratch_b_cap=2.0)
  return c
