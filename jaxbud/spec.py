"""Width specs: immutable values holding every width of a network explicitly.

A spec is the whole architecture. Prunable widths (the channels a structured-pruning method may
remove) are explicit per-layer entries, named after the convolution that produces them
(``block3/conv1``, ``dense2_layer5/conv1``), which is also that convolution's parameter path in
the built model. Pruning maps one spec to a smaller one; reduced networks are specs built with
other depths or widths; counts of parameters and multiply-accumulates come from the spec alone.

Parameter convention (the reference one): conv kernels, BN gamma and beta, dense weight and bias.
BN running statistics are not parameters.
"""
import dataclasses
import importlib
import json
import math
from typing import ClassVar

from jaxbud.errors import UsageError

WRN_STEM = 16
RESNET_STAGES = {  # depth -> (block kind, blocks per stage)
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
}
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_EXPANSION = {'basic': 1, 'bottleneck': 4}


def _check_int(field, value, minimum):
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise UsageError(f'{field} must be an integer >= {minimum}, got {value!r}')


def _check_widths(field, widths, count, minimum):
  if not isinstance(widths, tuple):
    raise UsageError(f'{field} must be a tuple of integers, got {type(widths).__name__}')
  if len(widths) != count:
    raise UsageError(f'{field} must have {count} entries for this depth, got {len(widths)}')
  for i, w in enumerate(widths):
    _check_int(f'{field}[{i}]', w, minimum)


class _Serialisable:
  """JSON round trip of a spec dataclass: `to_dict()` / `to_json()`, read back by `from_dict`."""

  def to_dict(self) -> dict:
    d = {'family': self.family}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      d[f.name] = ([list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple)
                   else v)
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), separators=(',', ':'))


def _conv(h, w, k, cin, cout, stride=1):
  """(params, MACs, out_h, out_w) of a bias-free k x k conv padded (k-1)//2."""
  pad = (k - 1) // 2
  oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  return k * k * cin * cout, oh * ow * k * k * cin * cout, oh, ow


@dataclasses.dataclass(frozen=True)
class WRNSpec(_Serialisable):
  """Pre-activation wide ResNet: residual-stream widths per stage, inner width per block."""
  depth: int
  stage_widths: tuple[int, int, int]
  inner: tuple[int, ...]
  stem: int = WRN_STEM
  in_channels: int = 3
  family: ClassVar[str] = 'wrn'

  def __post_init__(self):
    _check_int('depth', self.depth, 10)
    if (self.depth - 4) % 6:
      raise UsageError(f'WRN depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {self.depth}')
    _check_widths('stage_widths', self.stage_widths, 3, 1)
    _check_widths('inner', self.inner, 3 * self.blocks_per_stage, 0)
    _check_int('stem', self.stem, 1)
    _check_int('in_channels', self.in_channels, 1)

  @property
  def blocks_per_stage(self) -> int:
    return (self.depth - 4) // 6

  def blocks(self):
    """Yields (name, in width, inner width, out width, stride) for every block in order."""
    cin, i = self.stem, 0
    for s, cout in enumerate(self.stage_widths):
      for j in range(self.blocks_per_stage):
        yield f'block{i}', cin, self.inner[i], cout, (2 if s > 0 and j == 0 else 1)
        cin, i = cout, i + 1

  @property
  def prunable(self) -> tuple[int, ...]:
    return self.inner

  @property
  def prunable_names(self) -> tuple[str, ...]:
    return tuple(f'block{i}/conv1' for i in range(len(self.inner)))

  def with_prunable(self, widths) -> 'WRNSpec':
    return dataclasses.replace(self, inner=tuple(int(w) for w in widths))


@dataclasses.dataclass(frozen=True)
class DenseNetSpec(_Serialisable):
  """DenseNet-BC: growth rate and the bottleneck width of every dense layer."""
  depth: int
  growth: int
  bottleneck: tuple[int, ...]
  reduction: float = 0.5
  in_channels: int = 3
  family: ClassVar[str] = 'densenet_bc'

  def __post_init__(self):
    _check_int('depth', self.depth, 10)
    if (self.depth - 4) % 6:
      raise UsageError(
          f'DenseNet-BC depth must be 6n+4 (e.g. 40, 100, 190), got {self.depth}')
    _check_int('growth', self.growth, 1)
    _check_widths('bottleneck', self.bottleneck, 3 * self.layers_per_block, 0)
    if not 0 < self.reduction <= 1:
      raise UsageError(f'reduction must be in (0, 1], got {self.reduction!r}')
    _check_int('in_channels', self.in_channels, 1)

  @property
  def layers_per_block(self) -> int:
    return ((self.depth - 4) // 3) // 2

  @property
  def stem(self) -> int:
    return 2 * self.growth

  def layers(self):
    """Yields ('layer', name, in width, bottleneck, growth) and ('transition', name, in, out)."""
    c, i = self.stem, 0
    for b in range(3):
      for l in range(self.layers_per_block):
        yield 'layer', f'dense{b}_layer{l}', c, self.bottleneck[i], self.growth
        c, i = c + self.growth, i + 1
      if b < 2:
        out = int(math.floor(c * self.reduction))
        yield 'transition', f'trans{b}', c, out
        c = out

  @property
  def out_width(self) -> int:
    *_, last = self.layers()
    return last[2] + last[4]

  @property
  def prunable(self) -> tuple[int, ...]:
    return self.bottleneck

  @property
  def prunable_names(self) -> tuple[str, ...]:
    return tuple(f'dense{b}_layer{l}/conv1' for b in range(3)
                 for l in range(self.layers_per_block))

  def with_prunable(self, widths) -> 'DenseNetSpec':
    return dataclasses.replace(self, bottleneck=tuple(int(w) for w in widths))


@dataclasses.dataclass(frozen=True)
class ResNetSpec(_Serialisable):
  """ImageNet ResNet (v1.5): per block, the widths of its inner convs (1 basic, 2 bottleneck)."""
  depth: int
  inner: tuple[tuple[int, ...], ...]
  stage_widths: tuple[int, int, int, int] = RESNET_WIDTHS
  stem: int = 64
  in_channels: int = 3
  family: ClassVar[str] = 'resnet'

  def __post_init__(self):
    if not isinstance(self.depth, int) or self.depth not in RESNET_STAGES:
      raise UsageError(f'ResNet depth must be one of {sorted(RESNET_STAGES)}, got {self.depth!r}')
    _check_widths('stage_widths', self.stage_widths, 4, 1)
    _check_int('stem', self.stem, 1)
    _check_int('in_channels', self.in_channels, 1)
    kind, stages = RESNET_STAGES[self.depth]
    per_block = 1 if kind == 'basic' else 2
    if not isinstance(self.inner, tuple) or len(self.inner) != sum(stages):
      raise UsageError(f'inner must be a tuple of {sum(stages)} blocks for ResNet-{self.depth}, '
                       f'got {len(self.inner) if isinstance(self.inner, tuple) else self.inner!r}')
    for i, block in enumerate(self.inner):
      _check_widths(f'inner[{i}]', block, per_block, 0)

  @property
  def kind(self) -> str:
    return RESNET_STAGES[self.depth][0]

  def blocks(self):
    """Yields (name, in width, inner widths, out width, stride) for every block in order."""
    _, stages = RESNET_STAGES[self.depth]
    expansion = RESNET_EXPANSION[self.kind]
    cin, i = self.stem, 0
    for s, (n, width) in enumerate(zip(stages, self.stage_widths)):
      for j in range(n):
        cout = width * expansion
        yield f'block{i}', cin, self.inner[i], cout, (2 if s > 0 and j == 0 else 1)
        cin, i = cout, i + 1

  @property
  def prunable(self) -> tuple[int, ...]:
    return tuple(w for block in self.inner for w in block)

  @property
  def prunable_names(self) -> tuple[str, ...]:
    return tuple(f'block{i}/conv{j + 1}' for i, block in enumerate(self.inner)
                 for j in range(len(block)))

  def with_prunable(self, widths) -> 'ResNetSpec':
    widths, inner, k = [int(w) for w in widths], [], 0
    for block in self.inner:
      inner.append(tuple(widths[k:k + len(block)]))
      k += len(block)
    if k != len(widths):
      raise UsageError(f'expected {k} prunable widths, got {len(widths)}')
    return dataclasses.replace(self, inner=tuple(inner))


Spec = WRNSpec | DenseNetSpec | ResNetSpec
FAMILIES = {cls.family: cls for cls in (WRNSpec, DenseNetSpec, ResNetSpec)}
BUILTIN_FAMILIES = tuple(FAMILIES)  # counted by `_walk`; other families count themselves
# Families defined outside this module, imported when a spec of theirs is read.
_PLUGINS = {'module': 'jaxbud.graph.arch'}


def register_family(cls):
  """Adds a spec class defined elsewhere (e.g. jaxbud.graph.arch.ModuleSpec) to `FAMILIES`.
  It has `family`, `prunable`, `prunable_names`, `with_prunable`, `to_dict`, `count_params`,
  `count_macs`, `build(num_classes, dtype)` (its model, see `models.build`) and
  `from_config(model_cfg, image_shape, num_classes)` (for `train.build_spec`), and may have
  `min_width`, the fewest channels pruning leaves a layer (default 0)."""
  FAMILIES[cls.family] = cls
  return cls


def wrn(depth: int, widen: float, in_channels: int = 3) -> WRNSpec:
  """WRN-depth-widen; fractional widen factors give int(16k), int(32k), int(64k) stage widths."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise UsageError(f'WRN depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {depth!r}')
  if not widen > 0:
    raise UsageError(f'widen must be > 0, got {widen!r}')
  widths = tuple(int(base * widen) for base in (16, 32, 64))
  if min(widths) < 1:
    raise UsageError(f'widen={widen} gives a stage width of 0; use widen >= {1 / 16}')
  n = (depth - 4) // 6
  return WRNSpec(depth, widths, tuple(w for w in widths for _ in range(n)),
                 in_channels=in_channels)


def densenet_bc(depth: int, growth: int, in_channels: int = 3) -> DenseNetSpec:
  """DenseNet-BC-depth with growth rate k: 4k bottleneck channels in every dense layer."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise UsageError(f'DenseNet-BC depth must be 6n+4 (e.g. 40, 100, 190), got {depth!r}')
  n = ((depth - 4) // 3) // 2
  return DenseNetSpec(depth, growth, (4 * growth,) * (3 * n), in_channels=in_channels)


def resnet(depth: int, in_channels: int = 3) -> ResNetSpec:
  """ImageNet ResNet-18/34 (basic blocks) or ResNet-50 (bottleneck blocks) at standard widths."""
  if not isinstance(depth, int) or depth not in RESNET_STAGES:
    raise UsageError(f'ResNet depth must be one of {sorted(RESNET_STAGES)}, got {depth!r}')
  kind, stages = RESNET_STAGES[depth]
  inner = tuple(((w,) if kind == 'basic' else (w, w))
                for n, w in zip(stages, RESNET_WIDTHS) for _ in range(n))
  return ResNetSpec(depth, inner, in_channels=in_channels)


def scale_prunable(spec: Spec, factor: float, minimum: int = 1, keep_zeros: bool = True) -> Spec:
  """Every prunable width w becomes max(minimum, round(factor * w)).

  keep_zeros leaves layers pruned to 0 at 0; without it they get `minimum` too (the copycat
  rule max(1, round(s * w_b)) of the study).
  """
  return spec.with_prunable(
      0 if w == 0 and keep_zeros else max(minimum, int(round(factor * w)))
      for w in spec.prunable)


def get_family(family):
  """The spec class of `family`, importing a family defined elsewhere (`_PLUGINS`) on first
  use: a spec file or checkpoint of a `model.module` network is read without importing
  jaxbud.graph first."""
  if isinstance(family, str) and family in _PLUGINS and family not in FAMILIES:
    importlib.import_module(_PLUGINS[family])  # registers the family
  if not isinstance(family, str) or family not in FAMILIES:
    raise UsageError(f'unknown spec family {family!r}; expected one of '
                     f'{sorted(set(FAMILIES) | set(_PLUGINS))}')
  return FAMILIES[family]


def to_dict(spec: Spec) -> dict:
  return spec.to_dict()


def from_dict(d: dict) -> Spec:
  if not isinstance(d, dict):
    raise UsageError(f'a spec must be a JSON object, got {type(d).__name__}')
  family = d.get('family')
  cls = get_family(family)
  names = {f.name for f in dataclasses.fields(cls) if f.name != 'family'}
  unknown = sorted(set(d) - names - {'family'})
  if unknown:
    raise UsageError(f'unknown field(s) {unknown} for family {family!r}; '
                     f'expected {sorted(names)}')

  def tuples(v):
    return tuple(tuples(x) for x in v) if isinstance(v, list) else v
  try:
    return cls(**{k: tuples(v) for k, v in d.items() if k != 'family'})
  except TypeError as e:  # missing fields
    raise UsageError(f'invalid {family} spec: {e}') from None


def to_json(spec: Spec) -> str:
  return spec.to_json()


def from_json(text: str) -> Spec:
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise UsageError(f'spec is not valid JSON: {e}') from None
  return from_dict(d)


def save(spec: Spec, path) -> None:
  with open(path, 'w') as f:
    f.write(to_json(spec) + '\n')


def load(path) -> Spec:
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise UsageError(f'cannot read spec file {path}: {e.strerror}') from None
  try:
    return from_json(text)
  except ValueError as e:
    raise UsageError(f'spec file {path}: {e}') from None


def _walk(spec: Spec, image_size: int, num_classes: int):
  """(params, MACs) of the whole network, layer by layer."""
  h = w = image_size
  params = macs = 0

  def add(p, m):
    nonlocal params, macs
    params, macs = params + p, macs + m

  if spec.family == 'wrn':
    p, m, h, w = _conv(h, w, 3, spec.in_channels, spec.stem)
    add(p, m)
    for _, cin, mid, cout, stride in spec.blocks():
      add(2 * cin, 0)  # bn1
      if mid:
        p, m, oh, ow = _conv(h, w, 3, cin, mid, stride)
        p2, m2, _, _ = _conv(oh, ow, 3, mid, cout)
        add(p + 2 * mid + p2, m + m2)
      if cin != cout or stride != 1:
        p, m, _, _ = _conv(h, w, 1, cin, cout, stride)
        add(p, m)
      h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    c = spec.stage_widths[-1]
  elif spec.family == 'densenet_bc':
    p, m, h, w = _conv(h, w, 3, spec.in_channels, spec.stem)
    add(p, m)
    for kind, *rest in spec.layers():
      if kind == 'layer':
        _, cin, mid, k = rest
        add(2 * cin, 0)
        if mid:
          p, m, _, _ = _conv(h, w, 1, cin, mid)
          p2, m2, _, _ = _conv(h, w, 3, mid, k)
          add(p + 2 * mid + p2, m + m2)
      else:
        _, cin, cout = rest
        p, m, _, _ = _conv(h, w, 1, cin, cout)
        add(2 * cin + p, m)
        h, w = h // 2, w // 2
    c = spec.out_width
  else:
    p, m, h, w = _conv(h, w, 7, spec.in_channels, spec.stem, 2)
    add(p + 2 * spec.stem, m)
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3x3 max pool, stride 2, pad 1
    for _, cin, mids, cout, stride in spec.blocks():
      oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
      if spec.kind == 'basic':
        (mid,) = mids
        if mid:
          p, m, _, _ = _conv(h, w, 3, cin, mid, stride)
          p2, m2, _, _ = _conv(oh, ow, 3, mid, cout)
          add(p + 2 * mid + p2, m + m2)
      else:
        m1, m2_ = mids
        p, m, _, _ = _conv(h, w, 1, cin, m1)
        add(p + 2 * m1, m)
        p, m, _, _ = _conv(h, w, 3, m1, m2_, stride)
        add(p + 2 * m2_, m)
        p, m, _, _ = _conv(oh, ow, 1, m2_, cout)
        add(p, m)
      add(2 * cout, 0)  # last BN of the main path (kept even when the path is empty)
      if cin != cout or stride != 1:
        p, m, _, _ = _conv(h, w, 1, cin, cout, stride)
        add(p + 2 * cout, m)
      h, w = oh, ow
    c = spec.stage_widths[-1] * RESNET_EXPANSION[spec.kind]
  head_bn = 2 * c if spec.family != 'resnet' else 0  # post-activation ResNet has none
  add(head_bn + c * num_classes + num_classes, c * num_classes)
  return params, macs


def count_params(spec: Spec, num_classes: int = 10) -> int:
  """Parameters of the network built from `spec` (kernels, BN gamma/beta, dense weight/bias)."""
  if spec.family not in BUILTIN_FAMILIES:
    return spec.count_params(num_classes)
  return _walk(spec, 32, num_classes)[0]


def count_macs(spec: Spec, image_size: int = 32, num_classes: int = 10) -> int:
  """Multiply-accumulates of one forward pass on one image_size x image_size image."""
  if spec.family not in BUILTIN_FAMILIES:
    return spec.count_macs(image_size, num_classes)
  return _walk(spec, image_size, num_classes)[1]


BUDGET_UNITS = ('params', 'macs')


@dataclasses.dataclass(frozen=True)
class Size:
  """A network's size in one budget unit: `Size('macs', 10, 14)(spec)` is its MACs on 14x14
  images with 10 classes; `Size('params', 10)(spec)` its parameter count. Pruning budgets,
  snapshots and a study's matching of networks all measure with one Size."""
  unit: str
  num_classes: int = 10
  image_size: int = 32

  def __post_init__(self):
    if self.unit not in BUDGET_UNITS:
      raise UsageError(f'unknown prune.budget_unit {self.unit!r}; expected one of '
                       f'{BUDGET_UNITS}')

  def __call__(self, spec: Spec) -> int:
    if self.unit == 'params':
      return count_params(spec, self.num_classes)
    return count_macs(spec, self.image_size, self.num_classes)

  def floor(self, spec: Spec) -> int:
    """The size left with every prunable channel of `spec` removed (all but `min_width` per
    layer for a family that keeps some, see `register_family`)."""
    return self(spec.with_prunable([getattr(spec, 'min_width', 0)] * len(spec.prunable)))
