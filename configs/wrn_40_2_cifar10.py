"""WRN-40-2 on CIFAR-10 with the paper's schedule (authors' code).

SGD momentum 0.9, lr 0.1 x0.2 at epochs 60, 120, 160, 200 epochs, batch 128, coupled weight
decay 5e-4; pad-4 crop + flip; per-channel normalisation. Published test error: about 5% (the
paper's baseline); jaxbud has not trained it to the end yet (no accelerator run).

  python -m launch.train --config=configs/wrn_40_2_cifar10.py --workdir=runs/wrn_40_2 \
      --config.data.data_dir=~/tensorflow_datasets
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.update(family='wrn', depth=40, widen=2.0)
  c.data.update(name='cifar10', crop_pad=4, flip=True)
  c.train.update(epochs=200, batch_size=128, eval_batch_size=500, lr=0.1, weight_decay=5e-4,
                 schedule='multistep', milestones=(60, 120, 160), lr_decay=0.2,
                 eval_every_epochs=10, log_every_steps=100, checkpoint_every_epochs=1,
                 keep_checkpoints=3)
  return c
