"""ResNet-50 on ImageNet (tfds imagenet2012, manual download of the ILSVRC2012 tars).

Standard 90-epoch recipe: SGD momentum 0.9, lr 0.1 per 256 images, x0.1 at 30, 60, 80,
weight decay 1e-4. Meant for a GPU/TPU host. Training and prune runs stream their input
through jaxbud.data.stream (jaxbud.input_pipeline): each host decodes only its rows of every
batch, in `data.stream_workers` processes, with Inception random-resized crops and flips drawn
from (seed, step, row). Hence crop_pad=0, and `flip` is applied there rather than on the
device. Evaluation streams centre crops of the validation images (docs/data.md).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.model.update(family='resnet', depth=50)
  c.data.update(name='imagenet2012', crop_pad=0, flip=True, image_size=224,
                # Decoding processes per host. Each costs ~1.7 CPU ms an image (docs/data.md):
                # budget one per ~500 images/s the training step consumes.
                stream_workers=8)
  c.train.update(epochs=90, batch_size=256, eval_batch_size=500, lr=0.1, weight_decay=1e-4,
                 schedule='multistep', milestones=(30, 60, 80), lr_decay=0.1,
                 eval_every_epochs=1, log_every_steps=100, checkpoint_every_epochs=1,
                 keep_checkpoints=3)
  return c
