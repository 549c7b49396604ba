"""ResNet-50 on ImageNet (tfds imagenet2012, manual download of the ILSVRC2012 tars).

Standard 90-epoch recipe: SGD momentum 0.9, lr 0.1 per 256 images, x0.1 at 30, 60, 80,
weight decay 1e-4. Meant for a GPU/TPU host; the input here is decoded and center-cropped on the
host (see jaxbud.data.tfds_data), random-resized-crop streaming is a scale-out item.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.update(family='resnet', depth=50)
  c.data.update(name='imagenet2012', crop_pad=0, flip=True, image_size=224)
  c.train.update(epochs=90, batch_size=256, eval_batch_size=500, lr=0.1, weight_decay=1e-4,
                 schedule='multistep', milestones=(30, 60, 80), lr_decay=0.1,
                 eval_every_epochs=1, log_every_steps=100, checkpoint_every_epochs=1,
                 keep_checkpoints=3)
  return c
