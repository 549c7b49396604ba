"""Inference in XLA and in onnxruntime (CPU), the same network side by side.

RQ3 (do reduced networks run faster than pruned ones of the same size?) depends on where a
network runs. For each spec and batch size this times one function in two runtimes: the
eval-mode forward pass with normalisation (`jaxbud.inference.forward`) jitted by XLA with
jaxbud's compile options, and its ONNX model as `launch.export` writes it
(`jaxbud.export.onnx_model`) in an onnxruntime session on the CPU execution provider, at
onnxruntime's default settings (all optimisations, one intra-op thread per physical core).
The rules are jaxbud.bench's: warm-up calls, then `repeats` timed calls per runtime,
interleaved call by call in one process (`bench.time_round_robin`, each timed call primed by an
untimed one), medians with the min-max spread, the device recorded. Weights are the spec's
initialisation and the images random uint8; neither changes the time.
"""
import os
import statistics
import time

import jax
import numpy as np

from jaxbud import bench
from jaxbud import errors
from jaxbud import export
from jaxbud import inference
from jaxbud import models
from jaxbud import spec as spec_lib

RUNTIMES = ('xla', 'onnxruntime')


class _OrtCase:
  """An onnxruntime session and its input, with bench._Case's interface."""

  def __init__(self, session, images, setup_s):
    self.mode, self.session, self.compile_s, self.times = 'onnxruntime', session, setup_s, []
    self.feed = {session.get_inputs()[0].name: images}

  def call(self):
    t = time.perf_counter()
    self.session.run(None, self.feed)
    return time.perf_counter() - t


def _network(spec, image_size, num_classes) -> inference.Network:
  image_shape = (image_size, image_size, spec.in_channels)
  ds = bench._synthetic_dataset(image_shape, num_classes)  # pylint: disable=protected-access
  model = models.build(spec, num_classes)
  variables = models.init(model, jax.random.key(0, impl='rbg'), image_shape)  # compiles fast
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return inference.Network(spec, model, variables,
                           inference.model_info(spec, ds, 'float32'))


def bench_spec(named: bench.NamedSpec, *, batch_sizes=(1, 128), repeats: int = 10,
               warmup: int = 2, primed: bool = True, image_size: int = 0, num_classes: int = 0,
               xla_options: str = '', opset: int = export.DEFAULT_OPSET, log=print) -> list[dict]:
  """Rows (one per runtime and batch size) for one spec; see the module docstring."""
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top  # the export extra
  spec = named.spec
  image_size = image_size or bench.default_image_size(spec)
  num_classes = num_classes or bench.default_num_classes(spec)
  options = bench.resolve_xla_options(xla_options) or None
  net = _network(spec, image_size, num_classes)
  t = time.perf_counter()
  onnx_bytes = export.onnx_model(net, opset).SerializeToString()
  convert_s = time.perf_counter() - t
  rows = []
  for b in batch_sizes:
    images = bench.synthetic_batch(b, net.input_shape, num_classes)['image']
    xla_fn = lambda v, x: inference.forward(  # pylint: disable=unnecessary-lambda-assignment
        net.model, v, net.info['normalisation'], x)
    args = (net.variables, jax.device_put(images))
    compiled, compile_s = bench._compile(xla_fn, args, options=options)  # pylint: disable=protected-access
    t = time.perf_counter()
    session = ort.InferenceSession(onnx_bytes, providers=['CPUExecutionProvider'])
    cases = [bench._Case('xla', compiled, args, compile_s, stateful=False),  # pylint: disable=protected-access
             _OrtCase(session, images, convert_s + time.perf_counter() - t)]
    xla_out = np.asarray(cases[0].compiled(*args))
    ort_out = session.run(None, cases[1].feed)[0]
    max_diff = float(np.max(np.abs(xla_out - ort_out)))
    bench.time_round_robin(cases, repeats, warmup, primed)
    xla_median = statistics.median(cases[0].times)
    for c in cases:
      med = statistics.median(c.times)
      row = {
          'spec': named.label, 'family': spec.family,
          'params': spec_lib.count_params(spec, num_classes),
          'macs_per_image': spec_lib.count_macs(spec, image_size, num_classes),
          'image_size': image_size, 'num_classes': num_classes, 'runtime': c.mode,
          'batch_size': b, 'dtype': 'float32', 'compile_s': c.compile_s, 'median_s': med,
          'min_s': min(c.times), 'max_s': max(c.times),
          'spread': (max(c.times) - min(c.times)) / med, 'images_per_s': b / med,
          'vs_xla': med / xla_median, 'max_abs_logit_diff': max_diff,
          'repeats': repeats, 'warmup': warmup, 'primed': primed,
          'device_kind': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
          'cpu': bench.host_cpu(), 'cpu_count': os.cpu_count(),
          'ort_provider': 'CPUExecutionProvider', 'ort_version': ort.__version__,
          'onnx_opset': opset, 'jax_version': jax.__version__,
          'xla_options': bench.describe_xla_options(options or {}),
          'spec_json': spec_lib.to_json(spec),
      }
      rows.append(row)
      if log:
        log(format_table([row], header=False))
  return rows


def run(bcfg, log=print) -> list[dict]:
  """Rows for every spec and batch size of a bench config, XLA beside onnxruntime.

  Inference only: `bench.modes` is not read; `bench.dtypes` must be ('float32',).
  """
  if bcfg.get('runtime', 'xla') not in RUNTIMES:
    raise errors.UsageError(f'unknown bench.runtime {bcfg.runtime!r}; expected one of '
                            f'{RUNTIMES}')
  if tuple(bcfg.dtypes) != ('float32',):
    raise errors.UsageError(f'bench.runtime=onnxruntime times float32 networks; got '
                            f'bench.dtypes={tuple(bcfg.dtypes)}, use (\'float32\',)')
  bench.check_settings(('infer',), tuple(bcfg.batch_sizes), ('float32',), bcfg.repeats,
                       bcfg.warmup, bcfg.image_size, bcfg.num_classes)
  if not bcfg.specs:
    raise errors.UsageError(f'bench.specs is empty; give one or more of: {bench.SPEC_FORMS}')
  named = [bench.parse_spec(s) for s in bcfg.specs]
  xla_options = bcfg.get('xla_options', '')
  bench.resolve_xla_options(xla_options)
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.UsageError("bench.runtime=onnxruntime needs onnxruntime: pip install -e "
                            "'.[export]'") from None
  if log:
    log(format_table([], header=True))
  rows = []
  for ns in named:
    rows += bench_spec(ns, batch_sizes=tuple(bcfg.batch_sizes), repeats=bcfg.repeats,
                       warmup=bcfg.warmup, primed=bcfg.get('primed', True),
                       image_size=bcfg.image_size, num_classes=bcfg.num_classes,
                       xla_options=xla_options, log=log)
  return rows


_COLUMNS = (  # (header, key, width, format spec); '<' marks left-aligned text columns
    ('spec', 'spec', 22, '<'), ('runtime', 'runtime', 11, '<'), ('batch', 'batch_size', 5, ''),
    ('params', 'params', 10, ','), ('setup_s', 'compile_s', 8, '.2f'),
    ('median_s', 'median_s', 9, '.4f'), ('min_s', 'min_s', 8, '.4f'),
    ('max_s', 'max_s', 8, '.4f'), ('img/s', 'images_per_s', 10, '.1f'),
    ('vs_xla', 'vs_xla', 7, '.3f'), ('max|diff|', 'max_abs_logit_diff', 9, '.1e'),
)


def format_table(rows: list[dict], header: bool = True) -> str:
  return bench.format_table(rows, header, _COLUMNS)
