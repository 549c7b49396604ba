r"""Prune a network jaxbud does not know: a MobileNetV2-style CNN defined here, on digits.

The model is any linen module; nothing in jaxbud names its layers. `model.module` names the
factory below, and `model.widths` the width of each channel group `jaxbud.graph` reads from
the traced program (the stem's residual stream, each block's expansion, the last projection).
launch.train trains it; launch.prune scores the groups with the generic Fisher saliency from
the fine-tuning step's own backward pass, masks the least salient channels every round,
compacts, and writes snapshots the factory rebuilds at their widths (`jaxbud.load`,
launch.export). tests/test_graph_example.py runs these commands.

  python -m launch.train --config=configs/prune_mobilenet_v2_digits.py \
      --workdir=/tmp/jaxbud/mobilenet_v2
  python -m launch.prune --config=configs/prune_mobilenet_v2_digits.py \
      --workdir=/tmp/jaxbud/mobilenet_v2_prune \
      --config.prune.base_workdir=/tmp/jaxbud/mobilenet_v2
  python -m launch.export --src=/tmp/jaxbud/mobilenet_v2_prune/snapshots/4000 \
      --out=/tmp/jaxbud/mobilenet_v2_export --formats=stablehlo

Run them from the repository root: the factory is imported as
'configs.prune_mobilenet_v2_digits:make_module' (a 'path/to/file.py:function' works too).
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from configs import default
from configs import sections


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
  """The module for {group name: width} (the config's widths, or a pruned snapshot's)."""
  return MobileNetV2(stem=widths['stem'],
                     expand=tuple(widths[f'b{i}_expand'] for i in range(3)),
                     out=(widths['stem'], widths['stem'], widths['b2_project']))


def get_config(arg=None):
  c = default.get_config(arg)
  c.model = ml_collections.ConfigDict(dict(
      module='configs.prune_mobilenet_v2_digits:make_module',
      widths=dict(stem=16, b0_expand=32, b1_expand=32, b2_expand=48, b2_project=24),
      spec_file='',   # a snapshot's spec.json (its widths) in place of `widths`
      dtype='float32'))
  # 5,962 parameters; tuned snapshots at 5,000 and 4,000, two channels removed every 10 steps.
  c.prune = sections.prune_section(
      prune_every=10, rounds=60, channels_per_round=2, budgets=(5_000, 4_000),
      stop_after_last_budget=True, eval_every_rounds=10, compact_every=32, batch_size=64,
      log_every_rounds=10, checkpoint_every_rounds=20)
  return c
