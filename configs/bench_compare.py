r"""jaxbud vs the PyTorch peer (eager float32) on this machine, same models and batches, one run.

  python -m launch.bench_compare --config=configs/bench_compare.py

Needs torch (pip install torch); the torch side is the project's peer, scripts/torch_peer.py,
in eager float32 (its other modes: python scripts/torch_peer.py --help).
"""
import os

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.compare = ml_collections.ConfigDict(dict(
      pairs=('wrn-40-2@128', 'densenet_bc-100-12@64', 'densenet_bc-100-12@128'),
      modes=('infer', 'train', 'fisher'),  # torch times infer and train only
      repeats=6,  # a multiple of the 3 modes (the round-robin order rotates)
      warmup=1,
      primed=True,  # each timed call follows an untimed call of the same step, as in training
      measure_peak=True,
      xla_options='',  # jaxbud side: '' as training, 'xla': XLA's defaults, or 'name=value;...'
      torch_script=os.path.join(_ROOT, 'scripts', 'torch_peer.py'),
      out_dir='/tmp/jaxbud/bench_compare',
  ))
  return c
