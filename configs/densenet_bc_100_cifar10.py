"""DenseNet-BC-100 (k=12) on CIFAR-10 with the paper's schedule (authors' code).

SGD momentum 0.9, lr 0.1 x0.1 at epochs 150 and 225, 300 epochs, batch 64, coupled weight
decay 1e-4; pad-4 crop + flip. Published test error: 4.51% (Huang
et al.); jaxbud has not trained it to the end yet (no accelerator run).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.update(family='densenet_bc', depth=100, growth=12)
  c.data.update(name='cifar10', crop_pad=4, flip=True)
  c.train.update(epochs=300, batch_size=64, eval_batch_size=500, lr=0.1, weight_decay=1e-4,
                 schedule='multistep', milestones=(150, 225), lr_decay=0.1,
                 eval_every_epochs=10, log_every_steps=100, checkpoint_every_epochs=1,
                 keep_checkpoints=3)
  return c
