r"""Where a train step's convolution time goes: forward, input gradient and weight gradient of
every convolution in a network, timed alone in JAX (with jaxbud's compile options) and in
PyTorch eager (oneDNN), side by side in one process.

  python scripts/conv_breakdown.py --specs=wrn-40-2@128
  python scripts/conv_breakdown.py --specs=wrn-40-2@128 --xla_options=xla   # XLA's defaults

The convolutions are read from the model's own jaxpr (`jax.make_jaxpr` of a train-mode forward
pass), so the shapes, strides and padding are the ones the train step runs; identical ones are
timed once and weighted by how often they occur. For each unique convolution and each kind
(`fwd`: the convolution; `dgrad`: its input gradient; `wgrad`: its weight gradient, each compiled
alone with `jax.vjp`), the three kinds are called round-robin and the median of --repeats calls
is kept. All JAX timings come first, then all torch timings: torch's OpenMP threads keep spinning
for a while after each call, and when JAX and torch calls alternate that slows JAX's own threads
by up to 1.7x. torch runs NCHW float32, as the peer's eager_f32 mode (scripts/torch_peer.py)
does (`aten.convolution_backward` for the gradients, its default thread count). The summary row
per kind is the sum over all convolutions of count x median: a step's conv time if nothing
else ran. JSON goes to --out.
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.extend  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from jaxbud import bench  # pylint: disable=wrong-import-position
from jaxbud import models  # pylint: disable=wrong-import-position

KINDS = ('fwd', 'dgrad', 'wgrad')
Conv = collections.namedtuple('Conv', 'lhs rhs strides padding')  # NHWC input, HWIO kernel


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def network_convs(spec, batch: int) -> collections.Counter:
  """Counter of the distinct convolutions of `spec`'s train-mode forward pass at `batch`."""
  model = models.build(spec, bench.default_num_classes(spec))
  size = bench.default_image_size(spec)
  x = jnp.zeros((batch, size, size, spec.in_channels), jnp.float32)
  variables = jax.eval_shape(lambda: models.variables(model, jax.random.key(0), x.shape[1:]))
  fwd = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  jaxpr = jax.make_jaxpr(fwd)(variables, x).jaxpr
  convs = collections.Counter()
  for eqn in _eqns(jaxpr):
    if eqn.primitive.name != 'conv_general_dilated':
      continue
    p = eqn.params
    dn = p['dimension_numbers']
    if (dn.lhs_spec, dn.rhs_spec, dn.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2)):
      raise ValueError(f'expected NHWC/HWIO convolutions, got {dn}')
    if p['feature_group_count'] != 1 or set(p['lhs_dilation'] + p['rhs_dilation']) != {1}:
      raise ValueError('grouped or dilated convolutions are not supported here')
    lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
    convs[Conv(lhs, rhs, tuple(p['window_strides']), tuple(map(tuple, p['padding'])))] += 1
  return convs


def _conv(c: Conv):
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, c.strides, c.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def jax_calls(c: Conv, options) -> dict:
  """kind -> a no-argument callable that runs the compiled JAX computation once."""
  rng = np.random.default_rng(0)
  conv = _conv(c)
  x = jnp.asarray(rng.standard_normal(c.lhs), jnp.float32)
  w = jnp.asarray(rng.standard_normal(c.rhs) * 0.05, jnp.float32)
  dy = jnp.zeros(jax.eval_shape(conv, x, w).shape, jnp.float32) + 0.01
  fns = {'fwd': lambda x, w, dy: conv(x, w),
         'dgrad': lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
         'wgrad': lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]}
  calls = {}
  for kind, fn in fns.items():
    compiled = jax.jit(fn).lower(x, w, dy).compile(options)
    calls[kind] = lambda compiled=compiled: jax.block_until_ready(compiled(x, w, dy))
  return calls


def torch_calls(c: Conv) -> dict:
  """The same three computations in torch eager, NCHW float32 (None without torch)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  n, h, w, ci = c.lhs
  kh, kw, _, co = c.rhs
  x = torch.randn(n, ci, h, w)
  k = torch.randn(co, ci, kh, kw) * 0.05
  pad = [lo for lo, _ in c.padding]
  if any(lo != hi for lo, hi in c.padding):
    raise ValueError(f'torch takes symmetric padding only, got {c.padding}')
  y = torch.nn.functional.conv2d(x, k, stride=list(c.strides), padding=pad)
  dy = torch.full_like(y, 0.01)
  back = lambda mask: torch.ops.aten.convolution_backward(
      dy, x, k, None, list(c.strides), pad, [1, 1], False, [0, 0], 1, mask)

  def run(fn):
    def call():
      with torch.no_grad():
        fn()
    return call
  return {'fwd': run(lambda: torch.nn.functional.conv2d(x, k, stride=list(c.strides),
                                                         padding=pad)),
          'dgrad': run(lambda: back([True, False, False])),
          'wgrad': run(lambda: back([False, True, False]))}


def _median_interleaved(calls: list, repeats: int, warmup: int = 2) -> list[float]:
  for _ in range(warmup):
    for call in calls:
      call()
  times = [[] for _ in calls]
  for _ in range(repeats):
    for call, ts in zip(calls, times):
      t = time.perf_counter()
      call()
      ts.append(time.perf_counter() - t)
  return [statistics.median(ts) for ts in times]


def breakdown(named, batch, repeats, xla_options, log=print) -> dict:
  convs = sorted(network_convs(named.spec, batch).items(), key=lambda kv: -kv[0].lhs[1])
  options = bench.resolve_xla_options(xla_options) or None
  rows = []
  for c, count in convs:
    out_hw = jax.eval_shape(_conv(c), jax.ShapeDtypeStruct(c.lhs, jnp.float32),
                            jax.ShapeDtypeStruct(c.rhs, jnp.float32)).shape[1:3]
    flops = 2 * c.lhs[0] * int(np.prod(c.rhs)) * out_hw[0] * out_hw[1]
    calls = jax_calls(c, options)
    for kind, med in zip(KINDS, _median_interleaved([calls[k] for k in KINDS], repeats)):
      rows.append({'lhs': c.lhs, 'kernel': c.rhs, 'strides': c.strides, 'count': count,
                   'kind': kind, 'gflop': flops / 1e9, 'jax_s': med, 'torch_s': None})
  for i, (c, _) in enumerate(convs):  # after all JAX timings (see the module docstring)
    calls = torch_calls(c)
    meds = _median_interleaved([calls[k] for k in KINDS], repeats) if calls else [None] * 3
    for row, med in zip(rows[3 * i:3 * i + 3], meds):
      row['torch_s'] = med
      log(_row_line(row))
  return {'spec': named.label, 'batch_size': batch, 'rows': rows,
          'xla_options': bench.describe_xla_options(options or {}),
          'device_kind': jax.devices()[0].device_kind, 'jax_version': jax.__version__}


def _row_line(r):
  t = r['torch_s']
  shape = f'{r["lhs"][1]}x{r["lhs"][2]}x{r["lhs"][3]} k{r["kernel"][0]} ->{r["kernel"][3]}' + (
      f' s{r["strides"][0]}' if r['strides'][0] != 1 else '')
  line = (f'{shape:<22} x{r["count"]:<3} {r["kind"]:<6} jax {r["jax_s"] * 1e3:7.2f} ms '
          f'({r["gflop"] / r["jax_s"]:4.0f} GFLOP/s)')
  if t:
    line += (f'  torch {t * 1e3:7.2f} ms ({r["gflop"] / t:4.0f} GFLOP/s)  '
             f'jax/torch {r["jax_s"] / t:4.2f}')
  return line


def summary(result) -> str:
  lines = [f'{result["spec"]} b{result["batch_size"]} ({result["device_kind"]}, '
           f'XLA options: {result["xla_options"]}): per-step sum of count x median']
  has_torch = all(r['torch_s'] for r in result['rows'])
  for kind in KINDS + ('all',):
    rows = [r for r in result['rows'] if kind in ('all', r['kind'])]
    j = sum(r['count'] * r['jax_s'] for r in rows)
    line = f'  {kind:<6} jax {j:6.3f} s'
    if has_torch:
      t = sum(r['count'] * r['torch_s'] for r in rows)
      line += f'  torch {t:6.3f} s  jax-torch {j - t:+6.3f} s  jax/torch {j / t:4.2f}'
    lines.append(line)
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--specs', default='wrn-40-2@128', help='comma-separated SPEC@BATCH pairs')
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--xla_options', default='',
                 help="as the bench: '' compiles as training does (on CPU: YNNPACK fusions off), "
                      "'xla' with XLA's defaults, or 'name=value;...'")
  p.add_argument('--out', default='/tmp/jaxbud/conv_breakdown.json')
  args = p.parse_args()
  if args.repeats < 1:
    p.error('--repeats must be at least 1')
  pairs = [bench.parse_pair(s) for s in args.specs.split(',') if s]
  start = time.perf_counter()
  results = [breakdown(named, b, args.repeats, args.xla_options) for named, b in pairs]
  print()
  for r in results:
    print(summary(r))
  print(f'({time.perf_counter() - start:.0f} s)')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
