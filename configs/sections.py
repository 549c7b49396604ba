"""Config sections shared by the prune and study configs (the paper's WRN values as defaults).

A variant config calls `prune_section(...)` / `study_section(...)` with the fields it changes.
"""
import ml_collections


def prune_section(**overrides):
  """The `prune` section: a prune-and-tune run from a trained base network."""
  p = ml_collections.ConfigDict(dict(
      base_workdir='',       # workdir of the trained base network (launch.train)
      criterion='fisher',    # fisher | fisher_cost | taylor | bn_scale | l1 | l1_signed | random
      beta=0.0,              # fisher_cost: weight of the MACs saved by a removal
      normalise='none',      # scores per layer: none | l2 (Molchanov et al. 2017) | mean
      prune_every=100,       # fine-tuning steps per round (saliency accumulated over them)
      rounds=1300,           # removal rounds; rounds x channels_per_round <= prunable channels
      channels_per_round=1,  # channels removed per round (the paper: 1)
      schedule='iterative',  # iterative (a round rule, jaxbud.schedules) | one_shot
      finetune_epochs=1.0,   # one_shot: fine-tuning of each budget's cut network
      per_layer_ratio=0.0,   # >0: each layer loses this fraction a round (Li et al.); 0: global
      budgets=(),            # sizes at which tuned, compacted snapshots are saved
      budget_unit='params',  # what budgets count: params | macs
      stop_after_last_budget=False,
      eval_every_rounds=10,  # test error along the trajectory (the reference: every round)
      compact_every=64,      # compact (and recompile) once this many channels are masked
      batch_size=128,        # full batches only: an epoch's remainder is not read
      pad_mode='zeros',      # random-crop padding: zeros (the reference's prune.py) | reflect
      lr=0.0,                # constant fine-tuning lr; 0: the base schedule's final lr
      momentum=0.9,
      weight_decay=5e-4,
      log_every_rounds=10,
      checkpoint_every_rounds=50,
  ))
  p.update(overrides)
  return p


def study_section(**overrides):
  """The `study` section: every arm of the paper's comparison (see jaxbud.study)."""
  s = ml_collections.ConfigDict(dict(
      criteria=('fisher', 'l1'),      # prune-and-tune arms
      main_criterion='fisher',        # its snapshots give the scratch and copycat arms
      budgets=(),                     # parameter counts compared across arms
      reduced=('wrn_depth', 'wrn_width', 'wrn_bottleneck'),
      depths=(16, 22, 28, 34, 40),    # depth families: every depth smaller than the base
      copycat_budget=0,               # the snapshot whose width profile is scaled (a budget)
      scratch_b=True,                 # also train Liu et al.'s Scratch-B (schedule x MACs ratio)
      seeds=(0,),                     # from-scratch runs per point
      prune_seeds=(0,),               # base networks, each with its own prune run per criterion
      scratch_b_cap=0.0,              # Scratch-B epochs at most this multiple (0: no cap, as
                                      # Liu et al.'s CIFAR code; their ImageNet code caps at 2)
      reference_error=0.0,            # a published test error (%) of a network of the base's
      reference='',                   # kind, and its source; the report sets the base beside it
      latency_batch_sizes=(1, 128),
      latency_repeats=20,             # timed calls per network and batch size (RQ3)
      compilation_cache=True,         # keep compiled programs in <workdir>/jax_cache
      dry_run=False,                  # print the plan and its estimated cost, then exit
      # Fan-out (jaxbud.study.jobs): several jobs share one workdir, then one writes the report.
      shard='',                       # 'i/n': this job trains every n-th run of each stage
      only='',                        # a glob of run folders this job trains, e.g. 'base/*'
      report_only=False,              # train nothing; report what has finished, list the rest
      poll_seconds=30.0,              # how often a job looks for a run another job trains
      wait_hours=48.0,                # and how long it waits for it at most
  ))
  s.update(overrides)
  return s
