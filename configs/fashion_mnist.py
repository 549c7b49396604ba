"""WRN-16-1 on Fashion-MNIST at 14x14 (2x2 mean pooling), a short schedule for 2 CPU cores.

The study's base network (configs/study_fashion_mnist.py explains the choices): 6 epochs of
batch 128 (469 steps each, the last one partial), lr 0.1 x0.2 at epochs 3 and 5, pad-1 random
crops (reflection) and flips. Get the data once with `apt-get install dataset-fashion-mnist`
(or the four Zalando files in tfds' manual_dir, see docs/data.md).

  python -m launch.train --config=configs/fashion_mnist.py --workdir=/tmp/jaxbud/fashion
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.update(name='fashion_mnist', downsample=2, crop_pad=1, flip=True)
  c.train.update(epochs=6, batch_size=128, eval_batch_size=500, milestones=(3, 5),
                 eval_every_epochs=6, checkpoint_every_epochs=1, log_every_steps=100)
  return c
