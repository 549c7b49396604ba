"""Fisher prune-and-tune of the default digits WRN (train it first with configs/default.py).

  python -m launch.train --config=configs/default.py --workdir=/tmp/jaxbud/default
  python -m launch.prune --config=configs/prune_digits.py --workdir=/tmp/jaxbud/prune \
      --config.prune.base_workdir=/tmp/jaxbud/default
"""
import ml_collections

from configs import default


def prune_section(**overrides):
  """The prune settings shared by every prune config (paper's WRN values as defaults)."""
  p = ml_collections.ConfigDict(dict(
      base_workdir='',       # workdir of the trained base network (launch.train)
      criterion='fisher',    # fisher | fisher_cost | l1 | l1_signed | random | your own
      beta=0.0,              # fisher_cost: weight of the MACs saved by a removal
      prune_every=100,       # fine-tuning steps between removals (saliency accumulated over them)
      rounds=1300,           # removals (one channel each), at most the prunable channel count
      budgets=(),            # parameter counts at which compacted snapshots are saved
      stop_after_last_budget=False,
      compact_every=64,      # compact (and recompile) once this many channels are masked
      batch_size=128,
      lr=8e-4,               # constant; one optimizer for the whole run (momentum persists)
      momentum=0.9,
      weight_decay=5e-4,
      log_every_rounds=10,
      checkpoint_every_rounds=50,
  ))
  p.update(overrides)
  return p


def get_config(arg=None):
  c = default.get_config(arg)
  c.prune = prune_section(prune_every=10, rounds=200, budgets=(150_000, 120_000, 90_000),
                          stop_after_last_budget=True, compact_every=32, batch_size=64,
                          log_every_rounds=20, checkpoint_every_rounds=20)
  return c
