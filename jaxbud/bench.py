"""Timing of jitted inference, training and Fisher prune steps per spec, batch size and dtype.

Why a harness: RQ3 and RQ5 are claims about speed on real hardware, so every number comes from
the same compiled functions the library trains with, on whatever backend JAX finds.

For each (spec, batch size, dtype) every requested mode is compiled ahead of time
(`jax.jit(f).lower(...).compile()`, timed separately), warmed up, then timed `repeats` times
with `block_until_ready`. The modes of one (spec, batch, dtype) are timed round-robin, call by
call, so background load on a shared machine hits them alike and the Fisher/train ratio stays
meaningful. A call's time depends on which step ran just before it (on this project's CPU a step
runs about 5% faster right after an inference call), so by default (`primed`) every timed call
follows an untimed call of the same mode, as steps follow each other in a training or pruning
run; the order also rotates every round (use a multiple of the number of modes as `repeats`).
Inputs are random uint8 images; the data pipeline is not part of any figure.

- infer:  normalise + `model.apply` in eval mode (running BN statistics).
- train:  `train.make_train_step` (on-device crop/flip + normalise, forward/backward in train
          mode, SGD momentum with coupled weight decay), state donated.
- fisher: `prune.make_prune_step` on `prune.init_prune_state` (the Fisher accumulator): the
          train step plus per-example (N, C) channel gates and the accumulated Fisher saliency.
- graph_fisher: `jaxbud.graph.step.make_prune_step`, the same step for any module: no gate in
          the model, the groups read from the jaxpr, the Fisher saliency of the same layers
          (the spec's prunable ones) from `jaxbud.graph.fisher_step` (docs/any_model.md).

FLOP convention: XLA's `cost_analysis()['flops']` counts a multiply-add as 2 flops, so for
inference `xla_flops ~= 2 * batch * macs` (the spec's count_macs) plus the small elementwise
work; `xla_flops_over_2macs` shows that ratio. It is a little under 1 for 3x3 convs on small
maps because XLA does not count the taps that fall on zero padding, while count_macs does.
Achieved FLOP/s is XLA's flops over the median time, set against a measured matmul peak
(`peak_matmul`).
"""
import csv
import dataclasses
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxbud import augment
from jaxbud import data as data_lib
from jaxbud import models
from jaxbud import parallel
from jaxbud import prune
from jaxbud import spec as spec_lib
from jaxbud import train as train_lib
from jaxbud.errors import UsageError

MODES = ('infer', 'train', 'fisher', 'graph_fisher')
DEFAULT_MODES = MODES[:3]  # graph_fisher on request: it compares jaxbud.graph's step
FISHER_MODES = ('fisher', 'graph_fisher')  # steps with a saliency, reported against train's
DTYPES = train_lib.DTYPES
SPEC_FORMS = ("a name like 'wrn-40-2', 'wrn-16-1', 'densenet_bc-100-12', 'resnet-50', "
              "a spec.json file, a folder holding spec.json (a snapshot or train workdir), "
              "or inline spec JSON ('{...}' or 'label={...}')")
_NAMES = (
    (re.compile(r'wrn-(\d+)-(\d+(?:\.\d+)?)'), lambda d, k: spec_lib.wrn(int(d), float(k))),
    (re.compile(r'densenet(?:_bc|-bc)?-(\d+)-(\d+)'),
     lambda d, k: spec_lib.densenet_bc(int(d), int(k))),
    (re.compile(r'densenet(?:_bc|-bc)?-(\d+)'), lambda d: spec_lib.densenet_bc(int(d), 12)),
    (re.compile(r'resnet-(\d+)'), lambda d: spec_lib.resnet(int(d))),
)
# Synthetic-image normalisation statistics (0..255 scale); the values do not affect timings.
_MEAN, _STD = (127.5, 127.5, 127.5), (64.0, 64.0, 64.0)


@dataclasses.dataclass(frozen=True)
class NamedSpec:
  label: str   # what the user wrote (a name, a path) or the label of inline JSON
  spec: spec_lib.Spec


def parse_spec(text: str) -> NamedSpec:
  """A spec from a name, a spec.json path, a folder holding spec.json, or inline JSON."""
  if not isinstance(text, str) or not text.strip():
    raise UsageError(f'empty spec entry {text!r}; expected {SPEC_FORMS}')
  text = text.strip()
  m = re.fullmatch(r'([\w.+-]+)=(\{.*\})', text, re.S)
  if m or text.startswith('{'):
    label, body = m.groups() if m else (None, text)
    try:
      spec = spec_lib.from_json(body)
    except ValueError as e:
      raise UsageError(f'inline spec {text[:60]!r}: {e}') from None
    return NamedSpec(label or f'{spec.family}-{spec.depth}:custom', spec)
  for pattern, make in _NAMES:
    m = pattern.fullmatch(text.lower())
    if m:
      return NamedSpec(text, make(*m.groups()))
  if os.path.isdir(text):
    path = os.path.join(text, 'spec.json')
    if not os.path.isfile(path):
      raise UsageError(f'spec folder {text} holds no spec.json; expected {SPEC_FORMS}')
    return NamedSpec(text, spec_lib.load(path))
  if os.path.isfile(text):
    return NamedSpec(text, spec_lib.load(text))
  if os.sep in text or text.endswith('.json'):
    raise UsageError(f'no spec file or folder at {text}')
  raise UsageError(f'unknown spec {text!r}; expected {SPEC_FORMS}')


def default_image_size(spec) -> int:
  return 224 if spec.family == 'resnet' else 32


def default_num_classes(spec) -> int:
  return 1000 if spec.family == 'resnet' else 10


def synthetic_batch(batch_size: int, image_shape, num_classes: int, seed: int = 0) -> dict:
  """Random uint8 NHWC images and int32 labels, made on the host."""
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch_size, *image_shape), dtype=np.uint8),
          'label': rng.integers(0, num_classes, (batch_size,), dtype=np.int32)}


def _synthetic_dataset(image_shape, num_classes) -> data_lib.Dataset:
  """A Dataset carrying only what the steps read (statistics); no images are indexed."""
  c = image_shape[-1]
  empty = np.zeros((0, *image_shape), np.uint8)
  labels = np.zeros((0,), np.int32)
  return data_lib.Dataset('synthetic', empty, labels, empty, labels, num_classes,
                          (_MEAN * c)[:c], (_STD * c)[:c])


def _flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends have no cost model
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  flops = (ca or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None


def host_cpu() -> str:
  """The host CPU's model name with its family and model numbers, from /proc/cpuinfo (Linux),
  else platform.processor(). XLA:CPU compiles for the host's instruction set, so two CPUs
  that share a model name can round differently: the numbers tell them apart."""
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if not key.strip():
          break  # the first processor's block is enough
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  name = fields.get('model name') or platform.processor() or platform.machine()
  if 'cpu family' in fields and 'model' in fields:
    name += f' (family {fields["cpu family"]}, model {fields["model"]})'
  return name


def platform_name() -> str:
  """The device kind, with the host CPU when it computes on the CPU."""
  kind = jax.devices()[0].device_kind
  return f'{kind}, {host_cpu()}' if jax.devices()[0].platform == 'cpu' else kind


def parse_xla_options(text: str) -> dict:
  """'name=value;name=value' -> XLA compiler options for `.compile(compiler_options=...)`.

  Per-compilation DebugOptions, e.g. 'xla_cpu_experimental_ynn_fusion_type=' (YNNPACK off):
  unlike XLA_FLAGS they let one process compare variants under the same machine load.
  """
  opts = {}
  for item in filter(None, (s.strip() for s in str(text or '').split(';'))):
    name, sep, value = item.partition('=')
    if not sep or not name.startswith('xla_'):
      raise UsageError(f'bad XLA option {item!r}; expected name=value with an xla_* name, '
                       'several separated by ";"')
    low = value.lower()
    opts[name] = (True if low == 'true' else False if low == 'false'
                  else int(value) if re.fullmatch(r'-?\d+', value) else value)
  if opts:  # XLA checks names and values only when compiling: try a trivial program now
    try:
      jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=opts)
    except Exception as e:  # pylint: disable=broad-except  # XLA raises its own runtime error
      raise UsageError(f'XLA rejected options {text!r}: {str(e).splitlines()[0]}') from None
  return opts


def resolve_xla_options(text: str) -> dict:
  """The options a bench compiles with: '' -> jaxbud's defaults (`parallel.compiler_options`,
  the same as training uses), 'xla' -> XLA's own defaults, otherwise `parse_xla_options`."""
  text = str(text or '').strip()
  if not text:
    return dict(parallel.compiler_options() or {})
  return {} if text == 'xla' else parse_xla_options(text)


def describe_xla_options(options: dict) -> str:
  return ';'.join(f'{k}={v}' for k, v in sorted(options.items())) or 'xla defaults'


def _compile(fn, args, donate=(), options=None):
  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile(compiler_options=options)
  return compiled, time.perf_counter() - start


def peak_matmul(n: int = 2048, dtype: str = 'float32', repeats: int = 5, warmup: int = 2,
                xla_options: str = '') -> dict:
  """Measured matmul FLOP/s: a jitted (n, n) @ (n, n) jnp.dot, 2 * n**3 flops per call.

  The median over `repeats` timed calls (after `warmup`) is the reference "peak" the
  networks' achieved FLOP/s is set against; it is what XLA's own GEMM reaches, not a
  datasheet number. `xla_options` are those the networks are compiled with.
  """
  dt = jnp.dtype(dtype)
  # Host-drawn operands: an eager jax.random.normal would compile a sampler first.
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n), np.float32), dt) for _ in range(2))
  compiled, _ = _compile(lambda x, y: jnp.dot(x, y, preferred_element_type=dt), (a, b),
                         options=resolve_xla_options(xla_options) or None)
  for _ in range(warmup):
    compiled(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    compiled(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {'n': n, 'dtype': dtype, 'median_s': med, 'gflops': 2 * n ** 3 / med / 1e9,
          'how': f'jitted jnp.dot of two {n}x{n} {dtype} matrices, median of {repeats} calls '
                 f'after {warmup} warm-up, 2*n^3 flops'}


class _Case:
  """One mode of one (spec, batch, dtype): the compiled function and its rolling arguments."""

  def __init__(self, mode, compiled, args, compile_s, stateful):
    self.mode, self.compiled, self.args, self.compile_s = mode, compiled, args, compile_s
    self.stateful, self.times = stateful, []

  def call(self):
    t = time.perf_counter()
    out = self.compiled(*self.args)
    jax.block_until_ready(out)
    dt = time.perf_counter() - t
    if self.stateful:  # the state was donated: carry the new one into the next call
      self.args = (out[0],) + self.args[1:]
    return dt

  def pipelined(self, steps: int) -> float:
    secs, self.args = pipelined_seconds(self.compiled, self.args, steps, self.stateful)
    return secs


def pipelined_seconds(fn, args: tuple, steps: int, stateful: bool) -> tuple[float, tuple]:
  """(seconds per call, the arguments for the next call) of `steps` calls of `fn(*args)` issued
  back to back and synced once at the end.

  As a training loop runs: each call is dispatched while the device still works on the
  previous ones, so host dispatch overlaps device work (a synced call also counts the
  host-device round trip every time). `stateful`: the first argument is a state that `fn`
  returns updated as out[0] (and may donate); it is carried from call to call.
  """
  outs = []
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
    if stateful:
      args = (out[0],) + tuple(args[1:])
      outs = [out]  # each state depends on the one before: the last finishes last
    else:
      outs.append(out)  # independent calls: wait for every one
  jax.block_until_ready(outs)
  return (time.perf_counter() - t) / steps, args


def pipelined_median(fn, args: tuple, steps: int, repeats: int) -> float:
  """Median seconds per call of a stateful `fn` over `repeats` runs of `pipelined_seconds`
  (`steps` calls each), after one untimed run of max(1, steps // 4) calls that compiles."""
  _, args = pipelined_seconds(fn, args, max(1, steps // 4), stateful=True)
  times = []
  for _ in range(repeats):
    secs, args = pipelined_seconds(fn, args, steps, stateful=True)
    times.append(secs)
  return statistics.median(times)


def infer_case(model, variables, mean, std, images, options=None) -> _Case:
  """The AOT-compiled eval-mode forward pass (normalisation included) on uint8 `images`."""

  def infer(variables, images):
    return model.apply(variables, augment.normalize(images, mean, std, model.dtype))

  args = (variables, images)
  compiled, cs = _compile(infer, args, options=options)
  return _Case('infer', compiled, args, cs, stateful=False)


def time_round_robin(cases, repeats: int, warmup: int = 1, primed: bool = True):
  """Appends `repeats` timed calls to each case's `times`, the cases interleaved call by call
  (see the module doc). `cases` have `call() -> seconds` and a `times` list; `warmup` untimed
  rounds come first."""
  for _ in range(warmup):
    for c in cases:
      c.call()
  for r in range(repeats):  # round-robin: load changes hit every case alike
    # A step runs ~5% faster right after an inference call than right after a train step
    # (measured on CPU). Rotating the order alone still left train after infer in 2 of 3
    # rounds and fisher in 1 of 3; priming makes every timed call follow its own kind.
    for c in cases[r % len(cases):] + cases[:r % len(cases)]:
      if primed:
        c.call()
      c.times.append(c.call())


def _summary(times) -> dict:
  med = statistics.median(times)
  q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (med, med, med)
  return {'median_s': med, 'min_s': min(times), 'max_s': max(times), 'q1_s': q1, 'q3_s': q3,
          'spread': (max(times) - min(times)) / med}


def time_inference(networks, batch_sizes, *, repeats: int = 10, warmup: int = 1,
                   primed: bool = True, seed: int = 0) -> dict:
  """{label: {batch: median/min/max/quartile seconds, spread, and every timed call's seconds
  (times_s)}} of trained networks' inference.

  networks: (label, model, variables, mean, std, image_shape) tuples, e.g. from `jaxbud.load`:
  the trained weights, the model's compute dtype, normalisation included. All networks of one
  batch size are compiled first and timed round-robin, so machine load hits them alike.
  """
  options = resolve_xla_options('') or None
  out = {label: {} for label, *_ in networks}
  for b in batch_sizes:
    cases = []
    for label, model, variables, mean, std, image_shape in networks:
      images = jnp.asarray(synthetic_batch(b, image_shape, 2, seed)['image'])
      cases.append((label, infer_case(model, variables, mean, std, images, options)))
    time_round_robin([c for _, c in cases], repeats, warmup, primed)
    for label, c in cases:
      out[label][b] = {**_summary(c.times), 'compile_s': c.compile_s,
                       'times_s': list(c.times)}
  return out


def _cases(spec, modes, batch_size, dtype, image_size, num_classes, options=None, seed=0):
  """Builds and AOT-compiles every requested mode for one (spec, batch, dtype)."""
  image_shape = (image_size, image_size, spec.in_channels)
  ds = _synthetic_dataset(image_shape, num_classes)
  model = models.build(spec, num_classes, dtype)
  tx = train_lib.make_optimizer(ml_collections.ConfigDict(dict(
      schedule='constant', lr=0.1, momentum=0.9, weight_decay=5e-4)), steps_per_epoch=1)
  n_dev = jax.device_count()
  if batch_size % n_dev == 0:  # the library's layout: params replicated, batch on 'data'
    mesh = parallel.make_mesh()
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    devices_used = n_dev
  else:  # a batch that does not split evenly runs on one device
    repl = data = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    devices_used = 1
  batch = jax.device_put(synthetic_batch(batch_size, image_shape, num_classes, seed), data)
  init = parallel.jit_once(functools.partial(train_lib.create_state, model, tx,
                                             image_shape=image_shape), out_shardings=repl)
  state = init(jax.random.key(seed), data_seed=np.uint32(seed))
  crop_pad = 4 if spec.family != 'resnet' else 0
  cases = []
  for mode in modes:
    if mode == 'infer':
      cases.append(infer_case(model, {'params': state.params, 'batch_stats': state.batch_stats},
                              ds.mean, ds.std, batch['image'], options))
    elif mode == 'train':
      step = train_lib.make_train_step(model, tx, ds, crop_pad=crop_pad, flip=True)
      args = (jax.tree.map(jnp.copy, state), batch)
      compiled, cs = _compile(step, args, donate=0, options=options)
      cases.append(_Case(mode, compiled, args, cs, stateful=True))
    elif mode == 'fisher':
      step = prune.make_prune_step(model, tx, ds, crop_pad=crop_pad, flip=True)
      ps = jax.jit(prune.init_prune_state, static_argnums=1, out_shardings=repl)(
          jax.tree.map(jnp.copy, state), spec)
      args = (ps, batch)
      compiled, cs = _compile(step, args, donate=0, options=options)
      cases.append(_Case(mode, compiled, args, cs, stateful=True))
    elif mode == 'graph_fisher':
      from jaxbud import graph  # pylint: disable=g-import-not-at-top
      from jaxbud.graph import step as graph_step  # pylint: disable=g-import-not-at-top
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      x = jnp.zeros((batch_size, *image_shape), model.dtype)
      groups = graph.analyze(model.apply, variables, x, train=True, mutable=['batch_stats'])
      hand = [g for g in groups.prunable if g.name in spec.prunable_names]
      step = graph_step.make_prune_step(model.apply, tx, ds, crop_pad=crop_pad, flip=True,
                                        dtype=model.dtype, scored=[g.name for g in hand])
      ps = jax.jit(lambda s: graph_step.init_state(s, hand),
                   out_shardings=repl)(jax.tree.map(jnp.copy, state))
      args = (ps, batch)
      compiled, cs = _compile(step, args, donate=0, options=options)
      cases.append(_Case(mode, compiled, args, cs, stateful=True))
  return cases, devices_used


# --- pipelined timing: N calls back to back, one sync (bench_spec's pipelined_steps) ---

def _time_pipelined(cases, steps: int, repeats: int) -> dict:
  """{mode: median seconds per call} over `repeats` pipelined runs per case ({} if steps is 0).

  The cases take turns run by run (the order rotating), like the synced timing.
  """
  if steps <= 0:
    return {}
  times = {c.mode: [] for c in cases}
  for r in range(max(1, repeats)):
    for c in cases[r % len(cases):] + cases[:r % len(cases)]:
      times[c.mode].append(c.pipelined(steps))
  return {m: statistics.median(t) for m, t in times.items()}


def _pipelined_fields(pipe: dict, mode: str, batch_size: int, steps: int, repeats: int) -> dict:
  """A row's pipelined columns (None when pipelined timing was off)."""
  sec = pipe.get(mode)
  return {'pipelined_s': sec, 'pipelined_steps': steps if sec else None,
          'pipelined_repeats': repeats if sec else None,
          'pipelined_images_per_s': batch_size / sec if sec else None,
          'pipelined_vs_train': (sec / pipe['train'] if sec and mode in FISHER_MODES
                                 and 'train' in pipe else None)}


def check_settings(modes, batch_sizes, dtypes, repeats, warmup, image_size, num_classes):
  for m in modes:
    if m not in MODES:
      raise UsageError(f'unknown bench mode {m!r}; expected any of {MODES}')
  for d in dtypes:
    if d not in DTYPES:
      raise UsageError(f'unknown bench dtype {d!r}; expected any of {DTYPES}')
  for b in batch_sizes:
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
      raise UsageError(f'bench.batch_sizes entries must be integers >= 1, got {b!r}')
  if repeats < 1:
    raise UsageError(f'bench.repeats must be >= 1, got {repeats}')
  if warmup < 0:
    raise UsageError(f'bench.warmup must be >= 0, got {warmup}')
  if image_size < 0 or num_classes < 0:
    raise UsageError('bench.image_size and bench.num_classes must be >= 0 (0: family default)')
  if not modes or not batch_sizes or not dtypes:
    raise UsageError('bench.modes, bench.batch_sizes and bench.dtypes must not be empty')


def bench_spec(named: NamedSpec, *, batch_sizes=(1, 32, 128), dtypes=('float32',),
               modes=DEFAULT_MODES, repeats: int = 5, warmup: int = 1, image_size: int = 0,
               num_classes: int = 0, peaks: dict | None = None, xla_options: str = '',
               primed: bool = True, pipelined_steps: int = 0, pipelined_repeats: int = 3,
               log=print) -> list[dict]:
  """Rows (one per mode, batch size and dtype) for one spec; see the module docstring.

  With `pipelined_steps` > 0 each row also has `pipelined_s`: the median over
  `pipelined_repeats` runs of that many back-to-back calls with one sync (`_Case.pipelined`).
  """
  spec = named.spec
  options = resolve_xla_options(xla_options) or None
  image_size = image_size or default_image_size(spec)
  num_classes = num_classes or default_num_classes(spec)
  params = spec_lib.count_params(spec, num_classes)
  macs = spec_lib.count_macs(spec, image_size, num_classes)
  rows = []
  for dtype in dtypes:
    peak = (peaks or {}).get(dtype)
    for b in batch_sizes:
      cases, devices_used = _cases(spec, modes, b, dtype, image_size, num_classes, options)
      time_round_robin(cases, repeats, warmup, primed)
      pipe = _time_pipelined(cases, pipelined_steps, pipelined_repeats)
      medians = {c.mode: statistics.median(c.times) for c in cases}
      for c in cases:
        med = medians[c.mode]
        flops = _flops(c.compiled)
        row = {
            'spec': named.label, 'family': spec.family, 'params': params,
            'macs_per_image': macs, 'image_size': image_size, 'num_classes': num_classes,
            'mode': c.mode, 'batch_size': b, 'dtype': dtype,
            'compile_s': c.compile_s, 'median_s': med, 'min_s': min(c.times),
            'max_s': max(c.times), 'spread': (max(c.times) - min(c.times)) / med,
            'images_per_s': b / med,
            'vs_train': (med / medians['train'] if c.mode in FISHER_MODES and 'train' in medians
                         else None),
            'xla_flops': flops,
            'xla_flops_over_2macs': (flops / (2 * b * macs)
                                     if flops and c.mode == 'infer' else None),
            'achieved_gflops': flops / med / 1e9 if flops else None,
            'peak_gflops': peak['gflops'] if peak else None,
            'peak_fraction': flops / med / 1e9 / peak['gflops'] if flops and peak else None,
            'repeats': repeats, 'warmup': warmup, 'primed': primed,
            **_pipelined_fields(pipe, c.mode, b, pipelined_steps, pipelined_repeats),
            'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
            'devices_used': devices_used, 'backend': jax.default_backend(),
            'jax_version': jax.__version__,
            'xla_options': describe_xla_options(options or {}),
            'xla_flags_env': os.environ.get('XLA_FLAGS', ''),
            'spec_json': spec_lib.to_json(spec),
        }
        rows.append(row)
        if log:
          log(format_table([row], header=False))
      del cases
  return rows


def run(bcfg, log=print) -> list[dict]:
  """All rows for a config's `bench` section (specs x dtypes x batch sizes x modes)."""
  specs = tuple(bcfg.specs)
  modes, batch_sizes, dtypes = tuple(bcfg.modes), tuple(bcfg.batch_sizes), tuple(bcfg.dtypes)
  check_settings(modes, batch_sizes, dtypes, bcfg.repeats, bcfg.warmup, bcfg.image_size,
                 bcfg.num_classes)
  if not specs:
    raise UsageError(f'bench.specs is empty; give one or more of: {SPEC_FORMS}')
  named = [parse_spec(s) for s in specs]  # every entry checked before anything runs
  if bcfg.get('pipelined_steps', 0) < 0:
    raise ValueError(f'bench.pipelined_steps must be >= 0 (0: off), got {bcfg.pipelined_steps}')
  xla_options = bcfg.get('xla_options', '')
  resolve_xla_options(xla_options)
  peaks = {d: peak_matmul(bcfg.get('peak_n', 2048), d, xla_options=xla_options)
           for d in dtypes} if bcfg.get('measure_peak', True) else {}
  if log:
    for p in peaks.values():
      log(f'matmul peak {p["gflops"]:.1f} GFLOP/s ({p["how"]})')
    log(format_table([], header=True))
  rows = []
  for ns in named:
    rows += bench_spec(ns, batch_sizes=batch_sizes, dtypes=dtypes, modes=modes,
                       repeats=bcfg.repeats, warmup=bcfg.warmup, image_size=bcfg.image_size,
                       num_classes=bcfg.num_classes, peaks=peaks, xla_options=xla_options,
                       primed=bcfg.get('primed', True),
                       pipelined_steps=bcfg.get('pipelined_steps', 0), log=log)
  return rows


def write(rows: list[dict], out_dir: str, name: str = 'bench') -> tuple[str, str]:
  """Writes rows to <out_dir>/<name>.json (a list of objects) and <name>.csv; returns paths."""
  os.makedirs(out_dir, exist_ok=True)
  json_path, csv_path = os.path.join(out_dir, f'{name}.json'), os.path.join(out_dir, f'{name}.csv')
  with open(json_path, 'w') as f:
    json.dump(rows, f, indent=1)
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with open(csv_path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: '' if r.get(k) is None else r[k] for k in keys})
  return json_path, csv_path


_COLUMNS = (  # (header, key, width, format spec); '<' marks left-aligned text columns
    ('spec', 'spec', 22, '<'), ('mode', 'mode', 12, '<'), ('batch', 'batch_size', 5, ''),
    ('dtype', 'dtype', 8, '<'), ('params', 'params', 10, ','),
    ('compile_s', 'compile_s', 9, '.2f'), ('median_s', 'median_s', 9, '.4f'),
    ('min_s', 'min_s', 8, '.4f'), ('max_s', 'max_s', 8, '.4f'),
    ('img/s', 'images_per_s', 10, '.1f'), ('vs_train', 'vs_train', 8, '.3f'),
    ('GFLOP/s', 'achieved_gflops', 8, '.1f'), ('%peak', 'peak_fraction', 6, '.1%'),
    ('flops/2MAC', 'xla_flops_over_2macs', 10, '.3f'),
)


def format_table(rows: list[dict], header: bool = True, columns=_COLUMNS) -> str:
  """Aligned text table of the main columns (all columns are in the JSON/CSV)."""
  lines = []
  if header:
    lines.append(' '.join(f'{h:<{w}}' if f == '<' else f'{h:>{w}}' for h, _, w, f in columns))
  for r in rows:
    cells = []
    for _, key, w, f in columns:
      v = r.get(key)
      if v is None:
        cells.append(f'{"-":>{w}}')
      elif f == '<':
        cells.append(f'{str(v)[:w]:<{w}}')
      else:
        cells.append(f'{v:>{w}{f}}')
    lines.append(' '.join(cells))
  return '\n'.join(lines)


def fisher_overheads(rows: list[dict]) -> list[str]:
  """One line per Fisher row: its step time against the plain train step's."""
  what = {'fisher': 'Fisher step', 'graph_fisher': 'Generic Fisher step (jaxbud.graph)'}
  return [f'{what[r["mode"]]} vs train step, {r["spec"]} batch {r["batch_size"]} {r["dtype"]}: '
          f'{r["vs_train"]:.3f}x ({(r["vs_train"] - 1):+.1%})'
          for r in rows if r['mode'] in FISHER_MODES and r.get('vs_train')]


# --- PyTorch peer (scripts/torch_peer.py run as a subprocess, same machine, same run) ---

PEER_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'scripts', 'torch_peer.py')
PEER_FAMILIES = ('wrn', 'densenet_bc')  # what scripts/torch_peer.py builds


def check_peer_spec(spec: spec_lib.Spec):
  """The peer builds WRN and DenseNet-BC specs, pruned ones included, but no empty layer."""
  if spec.family not in PEER_FAMILIES:
    raise UsageError(f'the torch peer has no {spec.family} model; it builds {PEER_FAMILIES}')
  if 0 in spec.prunable:
    raise UsageError('the torch peer builds no zero-width layers (pruned-away paths)')


def run_torch_reference(script: str, spec: spec_lib.Spec, batch_size: int, repeats: int,
                        image_size: int = 32, num_classes: int = 10, warmup: int = 1,
                        timeout: float = 1800) -> dict:
  """Times `spec`'s train step and inference with the torch peer (eager float32, NCHW) in a
  subprocess: {'train_step_s', 'infer_s' (each the median of `repeats` synced calls), 'params',
  'framework', 'threads', 'torch_version', 'rows' (the peer's JSON lines)}."""
  if not os.path.isfile(script):
    raise UsageError(f'no torch peer script at {script} (set --config.compare.torch_script)')
  check_peer_spec(spec)
  cmd = [sys.executable, script, '--spec', spec.to_json(), '--batch', str(batch_size),
         '--size', str(image_size), '--classes', str(num_classes), '--repeats', str(repeats),
         '--warmup', str(warmup),
         '--steps', '1',  # the pipelined figure is not compared: 3 calls, not 150
         '--modes', 'eager_f32', '--ops', 'train,infer']
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  if r.returncode:
    raise ValueError(f'torch peer failed ({" ".join(cmd)}): {r.stderr.strip()[-500:]}')
  rows = {row['op']: row for row in map(json.loads, r.stdout.strip().splitlines())}
  return {'framework': 'torch', 'torch_version': rows['train']['torch_version'],
          'params': rows['train']['params'], 'threads': rows['train']['threads'],
          'train_step_s': rows['train']['synced_s'], 'infer_s': rows['infer']['synced_s'],
          'rows': list(rows.values())}


def compare_table(rows: list[dict], torch_results: dict) -> str:
  """Side by side: per (spec, batch), jaxbud vs torch median seconds and images/s.

  torch_results: {(spec label, batch): the reference's JSON dict}.
  """
  head = (f'{"spec":<20} {"batch":>5} {"what":<6} {"jax_s":>8} {"torch_s":>8} {"jax/torch":>9} '
          f'{"jax img/s":>9} {"torch img/s":>11} {"jax compile_s":>13}')
  lines = [head]
  for (label, b), t in torch_results.items():
    for mode, tkey in (('train', 'train_step_s'), ('infer', 'infer_s')):
      jr = next((r for r in rows if r['spec'] == label and r['batch_size'] == b
                 and r['mode'] == mode and r['dtype'] == 'float32'), None)
      if jr is None:
        continue
      ts = t[tkey]
      lines.append(f'{label:<20.20} {b:>5} {mode:<6} {jr["median_s"]:>8.4f} {ts:>8.4f} '
                   f'{jr["median_s"] / ts:>9.2f} {jr["images_per_s"]:>9.1f} {b / ts:>11.1f} '
                   f'{jr["compile_s"]:>13.2f}')
  return '\n'.join(lines)


def parse_pair(text: str) -> tuple[NamedSpec, int]:
  """'SPEC@BATCH' (e.g. 'wrn-40-2@128') -> (spec, batch size)."""
  spec_text, sep, b = str(text).rpartition('@')
  if not sep or not b.isdigit() or int(b) < 1:
    raise UsageError(f'compare entry {text!r} must be SPEC@BATCH, e.g. wrn-40-2@128')
  return parse_spec(spec_text), int(b)


def compare(ccfg, log=print) -> tuple[list[dict], dict]:
  """jaxbud rows and torch reference results for every 'SPEC@BATCH' of `ccfg.pairs`.

  Each pair runs jaxbud first, then the torch peer (scripts/torch_peer.py, eager float32) in a
  subprocess, so both see the machine in the same state; torch gets the same model, batch,
  image size and repeats.
  """
  check_settings(tuple(ccfg.modes), (1,), ('float32',), ccfg.repeats, ccfg.warmup, 0, 0)
  pairs = [parse_pair(p) for p in ccfg.pairs]
  for ns, _ in pairs:
    check_peer_spec(ns.spec)  # every pair must have a peer model before anything runs
  if not os.path.isfile(ccfg.torch_script):
    raise UsageError(f'no torch peer script at {ccfg.torch_script} '
                     '(set --config.compare.torch_script)')
  xla_options = ccfg.get('xla_options', '')
  resolve_xla_options(xla_options)
  peaks = ({'float32': peak_matmul(xla_options=xla_options)}
           if ccfg.get('measure_peak', True) else {})
  rows, torch_results = [], {}
  for ns, b in pairs:
    rows += bench_spec(ns, batch_sizes=(b,), modes=tuple(ccfg.modes), repeats=ccfg.repeats,
                       warmup=ccfg.warmup, peaks=peaks, xla_options=xla_options,
                       primed=ccfg.get('primed', True), log=log)
    t = run_torch_reference(ccfg.torch_script, ns.spec, b, ccfg.repeats,
                            default_image_size(ns.spec), default_num_classes(ns.spec),
                            ccfg.warmup)
    torch_results[(ns.label, b)] = t
    params = spec_lib.count_params(ns.spec, default_num_classes(ns.spec))
    if t.get('params') != params:  # the two sides must time the same network
      raise ValueError(f'torch peer built {t.get("params")} params for {ns.label}, '
                       f'jaxbud {params}')
    if log:
      log(f'torch {ns.label} batch {b}: train {t["train_step_s"]:.4f} s, '
          f'infer {t["infer_s"]:.4f} s ({t["framework"]}, {t["threads"]} threads)')
  return rows, torch_results
