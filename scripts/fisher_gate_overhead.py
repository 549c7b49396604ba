r"""Fisher step overhead with the previous autodiff gate and the library's custom-VJP gate.

  python scripts/fisher_gate_overhead.py --specs=wrn-40-2@64,wrn-40-2@128,densenet_bc-100-12@64
  python scripts/fisher_gate_overhead.py --xla_options=xla   # XLA:CPU defaults (YNNPACK on)

One process, one machine state: for each SPEC@BATCH the plain train step and one Fisher prune
step per gate variant are compiled with the bench harness's own builder (`jaxbud.bench`), then
called interleaved (train, fisher[variant 1], fisher[variant 2], ..., train, ...) so background
load on a shared CPU hits every variant alike. Reported per variant: median seconds, the Fisher
step over the train step (ratio of medians, median of the per-round ratios, ratio of the fastest
calls, ratio of median process CPU time), and the last variant's median per-round ratio to the
first. JSON with every call's time goes to --out.

Variants (the library's gate is swapped in `jaxbud.models` only while a step is traced):
- autodiff:   the gate before the custom VJP, `x * g[:, None, None, :]` differentiated by JAX.
- custom_vjp: `jaxbud.models.gate`, the library's gate: saves only y = x * g (the next conv's
              input) and returns sum_hw(y * dy) / g, exact where g != 0, 0 where g == 0.
- save_x:     a custom VJP that saves x and returns sum_hw(x * dy), exact everywhere; XLA
              compiles it to the same program as `autodiff` (same buffers, same bytes).
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from jaxbud import bench  # pylint: disable=wrong-import-position
from jaxbud import models  # pylint: disable=wrong-import-position


def autodiff_gate(x, gates, name):
  """The gate as it was before `models.gate`: a plain product, differentiated by JAX."""
  if gates is None or name not in gates:
    return x
  g = gates[name]
  g = g[:, None, None, :] if g.ndim == 2 else g
  return x * g.astype(x.dtype)


@jax.custom_vjp
def _save_x(x, g):
  return x * g[:, None, None, :].astype(x.dtype)


def _save_x_fwd(x, g):
  return _save_x(x, g), (x, g)


def _save_x_bwd(res, dy):
  x, g = res
  dg = jnp.sum(x.astype(jnp.float32) * dy.astype(jnp.float32), axis=(1, 2))
  return dy * g[:, None, None, :].astype(dy.dtype), dg.astype(g.dtype)


_save_x.defvjp(_save_x_fwd, _save_x_bwd)


def save_x_gate(x, gates, name):
  """A custom VJP that keeps the gate's input x, exact also where g == 0."""
  if gates is None or name not in gates:
    return x
  g = gates[name]
  return _save_x(x, g) if g.ndim == 2 else x * g.astype(x.dtype)


VARIANTS = {'autodiff': autodiff_gate, 'custom_vjp': models.apply_gate, 'save_x': save_x_gate}


@contextlib.contextmanager
def gate_variant(fn):
  orig = models.apply_gate
  models.apply_gate = fn
  try:
    yield
  finally:
    models.apply_gate = orig


def compare(named, batch, variants, dtype, repeats, warmup, xla_options, log=print):
  """Times train and every Fisher variant interleaved for one (spec, batch); returns a dict."""
  spec = named.spec
  size, classes = bench.default_image_size(spec), bench.default_num_classes(spec)
  options = bench.resolve_xla_options(xla_options) or None
  build = bench._cases  # pylint: disable=protected-access  # the bench's own step builder
  cases, _ = build(spec, ('train',), batch, dtype, size, classes, options)
  names = ['train']
  for v in variants:
    with gate_variant(VARIANTS[v]):
      cases += build(spec, ('fisher',), batch, dtype, size, classes, options)[0]
    names.append(f'fisher[{v}]')
  for name, c in zip(names, cases):
    log(f'{named.label} b{batch} {dtype} {name}: compiled in {c.compile_s:.1f} s')
  for _ in range(warmup):
    for c in cases:
      c.call()
  cpu = [[] for _ in cases]  # process CPU seconds per call: less sensitive to other processes
  for r in range(repeats):
    for c, ct in zip(cases, cpu):
      t = time.process_time()
      c.times.append(c.call())
      ct.append(time.process_time() - t)
    log(f'  round {r + 1}: ' + ', '.join(f'{n} {c.times[-1]:.3f}' for n, c in zip(names, cases)))
  train = cases[0].times
  out = {'spec': named.label, 'batch_size': batch, 'dtype': dtype, 'repeats': repeats,
         'xla_options': bench.describe_xla_options(options or {}),
         'device_kind': jax.devices()[0].device_kind, 'jax_version': jax.__version__,
         'train_median_s': statistics.median(train), 'train_times': train,
         'train_cpu_s': cpu[0], 'variants': {}}
  first = cases[1].times
  for v, c, ct in zip(variants, cases[1:], cpu[1:]):
    out['variants'][v] = {
        'median_s': statistics.median(c.times), 'times': c.times, 'cpu_s': ct,
        'compile_s': c.compile_s,
        'vs_train': statistics.median(c.times) / statistics.median(train),
        'vs_train_min': min(c.times) / min(train),
        'vs_train_cpu': statistics.median(ct) / statistics.median(cpu[0]),
        'vs_train_paired': statistics.median(f / t for f, t in zip(c.times, train)),
        f'vs_{variants[0]}_paired': statistics.median(f / a for f, a in zip(c.times, first)),
    }
  return out


def table(results, variants):
  lines = [f'{"spec":<20} {"batch":>5} {"dtype":<8} {"train s":>8} ' + ' '.join(
      f'{v + " s":>14} {"vs train":>8} {"paired":>7} {"min":>6} {"cpu":>6}' for v in variants)
      + f' {"new/old paired":>14}']
  for r in results:
    cells = [f'{r["spec"]:<20.20} {r["batch_size"]:>5} {r["dtype"]:<8} '
             f'{r["train_median_s"]:>8.3f}']
    for v in variants:
      d = r['variants'][v]
      cells.append(f'{d["median_s"]:>14.3f} {d["vs_train"]:>8.3f} {d["vs_train_paired"]:>7.3f} '
                   f'{d["vs_train_min"]:>6.3f} {d["vs_train_cpu"]:>6.3f}')
    last = r['variants'][variants[-1]]
    cells.append(f'{last[f"vs_{variants[0]}_paired"]:>14.3f}')
    lines.append(' '.join(cells))
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--specs', default='wrn-40-2@64,wrn-40-2@128,densenet_bc-100-12@64',
                 help='comma-separated SPEC@BATCH pairs')
  p.add_argument('--variants', default='autodiff,custom_vjp',
                 help=f'comma-separated, from {sorted(VARIANTS)}; the first is the baseline')
  p.add_argument('--dtype', default='float32', choices=bench.DTYPES)
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--xla_options', default='',
                 help="as the bench: '' compiles as training does (on CPU: YNNPACK fusions off), "
                      "'xla' with XLA's defaults, or 'name=value;...'")
  p.add_argument('--out', default='/tmp/jaxbud/fisher_gate_overhead.json')
  args = p.parse_args()
  variants = [v for v in args.variants.split(',') if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown or not variants:
    p.error(f'unknown or no --variants {unknown}; expected some of {sorted(VARIANTS)}')
  pairs = [bench.parse_pair(s) for s in args.specs.split(',') if s]  # all checked up front
  results = []
  start = time.perf_counter()
  for named, b in pairs:
    results.append(compare(named, b, variants, args.dtype, args.repeats, args.warmup,
                           args.xla_options))
  print()
  print(table(results, variants))
  print(f'(vs train: ratio of medians; paired: median of per-round ratios; min: ratio of the '
        f'fastest calls; cpu: ratio of median process CPU time; new/old paired: median of '
        f'per-round {variants[-1]}/{variants[0]}; {time.perf_counter() - start:.0f} s)')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
