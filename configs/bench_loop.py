r"""The whole training loop on synthetic CIFAR-shaped data against its bare step (jaxbud.loop_bench).

  python -m launch.bench_loop --config=configs/bench_loop.py --workdir=/tmp/jaxbud/loop
  python -m launch.bench_loop --config=configs/bench_loop.py:cpu --workdir=/tmp/jaxbud/loop_cpu

Default: WRN-40-2, batch 128, bfloat16, the paper's logging, evaluation and checkpoint settings
(configs/wrn_40_2_cifar10.py) for 2 epochs of 50,000 random images (782 steps, one checkpoint
inside the timed window), then the paper's runs (the `projection` section: the WRN-40-2 study
config) projected from the measured rates. ':cpu' is a small version for a 2-core CPU
(WRN-16-1, batch 32, 400 steps, a few minutes), with no projection.
"""
import ml_collections

from configs import study_wrn_40_2_cifar10
from configs import wrn_40_2_cifar10


def get_config(arg=None):
  if arg not in (None, '', 'cpu'):
    raise ValueError(f"configs/bench_loop.py takes no argument or ':cpu', got {arg!r}")
  c = wrn_40_2_cifar10.get_config()
  c.model.dtype = 'bfloat16'
  c.data.name = 'synthetic'
  c.train.update(epochs=2, eval_every_epochs=2)
  c.loop = ml_collections.ConfigDict(dict(
      bare_steps=100,  # bare step: this many calls back to back, one sync
      repeats=3,       # median of this many such runs
      project=True,    # project the `projection` config's runs from the measured rates
  ))
  c.projection = study_wrn_40_2_cifar10.get_config()
  if arg == 'cpu':
    c.model.update(depth=16, widen=1.0, dtype='float32')
    c.data.synthetic.update(train_size=6_400, test_size=1_000)  # 200 steps per epoch
    c.train.update(batch_size=32, eval_batch_size=500)
    c.loop.update(bare_steps=50, project=False)
  return c
