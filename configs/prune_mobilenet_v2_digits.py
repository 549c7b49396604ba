"""Prune a network jaxbud does not know: a MobileNetV2-style CNN defined here, on digits.

The model is any linen module; nothing in jaxbud names its layers. `jaxbud.graph` reads its
channel groups from the traced program (the stem's residual stream, each block's expansion),
scores them with the generic Fisher saliency from the training step's own backward pass,
masks the least salient channels every few steps, and compacts the result into the smaller
program (or, with `make_module`, into a smaller module of this class). The test
(tests/test_graph_example.py) runs it end to end and checks that the compacted network's test
accuracy is the masked one's.

  from configs import prune_mobilenet_v2_digits as cfg
  from jaxbud.graph import tune
  c = cfg.get_config()
  model = cfg.make_module(c.model.widths)
  ...  # see tests/test_graph_example.py

`launch.prune` does not take this config yet (docs/any_model.md, "Prune-and-tune").
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections


class MobileNetV2(nn.Module):
  """Inverted residual blocks (expand 1x1, depthwise 3x3, project 1x1, ReLU6) on 8x8 images.
  `stem` is the width of the residual stream, `expand` the expanded width of each block."""
  stem: int = 16
  expand: tuple = (32, 32, 48)
  out: tuple = (16, 16, 24)
  strides: tuple = (1, 1, 2)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
    conv = lambda f, k, name, s=1, g=1: nn.Conv(f, (k, k), strides=s, padding='SAME',
                                                feature_group_count=g, use_bias=False,
                                                name=name)
    x = nn.relu6(bn('stem_bn')(conv(self.stem, 3, 'stem')(x)))
    for i, (e, o, s) in enumerate(zip(self.expand, self.out, self.strides)):
      y = nn.relu6(bn(f'b{i}_bn1')(conv(e, 1, f'b{i}_expand')(x)))
      y = nn.relu6(bn(f'b{i}_bn2')(conv(e, 3, f'b{i}_dw', s, e)(y)))
      y = bn(f'b{i}_bn3')(conv(o, 1, f'b{i}_project')(y))
      x = x + y if s == 1 and o == x.shape[-1] else y
    return nn.Dense(self.num_classes, name='head')(jnp.mean(x, axis=(1, 2)))


def make_module(widths) -> MobileNetV2:
  """The module for {group name: width} (`jg.compact`'s widths, or the config's)."""
  return MobileNetV2(stem=widths['stem'],
                     expand=tuple(widths[f'b{i}_expand'] for i in range(3)),
                     out=(widths['stem'], widths['stem'], widths['b2_project']))


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      widths=dict(stem=16, b0_expand=32, b1_expand=32, b2_expand=48, b2_project=24)))
  c.data = ml_collections.ConfigDict(dict(name='digits'))
  c.train = ml_collections.ConfigDict(dict(steps=300, lr=0.05, batch_size=64))
  c.prune = ml_collections.ConfigDict(dict(
      rounds=24,        # removals
      prune_every=10,   # steps of Fisher accumulated per removal
      per_round=2,      # channels removed per removal (48 of the 144 prunable)
      lr=0.01, batch_size=64))
  return c
