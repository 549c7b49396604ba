"""The embedded default: WRN-16-1 on scikit-learn's 8x8 digits, seconds on 2 CPU cores.

  python -m launch.train --config=configs/default.py --workdir=/tmp/jaxbud/default
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      family='wrn',        # wrn | densenet_bc | resnet
      depth=16,
      widen=1.0,           # WRN width k (fractional allowed)
      growth=12,           # DenseNet-BC growth rate k
      bottleneck_scale=1.0,  # uniform multiplier Z on every prunable width: int(w * Z)
      spec_file='',        # a spec JSON (e.g. a pruned snapshot) overrides the family fields
      dtype='float32',     # compute dtype: float32 | bfloat16
  ))
  c.data = ml_collections.ConfigDict(dict(
      name='digits',       # digits | fashion_mnist | cifar10 | cifar100 | imagenet2012 | synthetic
      data_dir='',         # tfds data_dir ('' = tfds default, ~/tensorflow_datasets)
      manual_dir='',       # where original archives are ('' = <data_dir>/downloads/manual)
      crop_pad=1,          # pad-and-random-crop padding (CIFAR: 4)
      flip=False,          # random horizontal flips (not for digits)
      pad_mode='reflect',  # random-crop padding of training runs: reflect (the reference's
                           # train.py) | zeros; prune runs use prune.pad_mode
      image_size=224,      # ImageNet only
      downsample=1,        # f x f mean pooling of in-memory images (Fashion-MNIST study: 2)
      # name='synthetic': random uint8 images for benchmarks and smoke tests (no download);
      # CIFAR-10's shape and sizes unless changed here.
      synthetic=ml_collections.ConfigDict(dict(
          train_size=50_000, test_size=10_000, image_size=32, channels=3, num_classes=10,
          seed=0)),
  ))
  c.train = ml_collections.ConfigDict(dict(
      epochs=15,
      batch_size=64,
      eval_batch_size=360,
      lr=0.1,
      momentum=0.9,
      weight_decay=5e-4,
      schedule='multistep',  # multistep | cosine | constant
      milestones=(8, 12),    # epochs at which the lr is multiplied by lr_decay
      lr_decay=0.2,
      bn_l1=0.0,             # network slimming: + bn_l1 * sum |gamma| of the prunable channels' BNs
      eval_every_epochs=5,
      log_every_steps=50,
      checkpoint_every_epochs=1,
      keep_checkpoints=2,
  ))
  return c
