r"""Per-HLO-op time of one of the bench's jitted steps on XLA:CPU, from a profiler trace.

  python scripts/profile_step.py --spec=wrn-40-2 --batch=128 --mode=train
  python scripts/profile_step.py --spec=wrn-40-2 --batch=128 --mode=train --top=40 --by=op

The step is built and compiled exactly as `jaxbud.bench` does (same compile options), plus
`xla_cpu_enable_xprof_traceme=true`, which makes XLA:CPU's thunk executor record one trace
event per executed op. After --warmup calls, --steps calls run under `jax.profiler.trace`; the
events of XLA's threads are summed per op (--by=op) or per op kind, the op name without its
numeric suffix (--by=kind, e.g. all `transpose_copy_fusion.N` together), and printed per step.

What the sums mean: thread time, not wall time. Two ops running at once on the 2 cores both
count, and a library call that fans out to XLA's thread pool (Eigen convolutions and dots)
shows up only as the short dispatch on the calling thread, so convolutions are nearly absent
here: time them with scripts/conv_breakdown.py. The fusions, reductions and transposes that XLA
emits itself run inside their events and are counted in full.

Reading the trace needs the XSpace protobuf that ships with tensorflow
(`pip install -e .[data]`); the optimised HLO goes to --hlo_out to look up a fusion's body.
"""
import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position

from jaxbud import bench  # pylint: disable=wrong-import-position

_NOT_OPS = ('ThunkExecutor', '$')  # executor bookkeeping and Python frames


def op_times(trace_dir: str, by: str) -> tuple[collections.Counter, collections.Counter]:
  """(seconds, count) per op or op kind over the XLA threads of the trace in `trace_dir`."""
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise SystemExit(f'reading the trace needs tensorflow (pip install -e .[data]): {e}')
  files = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  if not files:
    raise SystemExit(f'no .xplane.pb written under {trace_dir}')
  space = xplane_pb2.XSpace()
  with open(files[0], 'rb') as f:
    space.ParseFromString(f.read())
  secs, count = collections.Counter(), collections.Counter()
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if not line.name.startswith('tf_XLA'):  # XLA's client and Eigen threads only
        continue
      for ev in line.events:
        name = names.get(ev.metadata_id, '?')
        if name.startswith(_NOT_OPS) or name.startswith('end: '):
          continue
        key = re.sub(r'[.\d]+$', '', name) if by == 'kind' else name
        secs[key] += ev.duration_ps / 1e12
        count[key] += 1
  return secs, count


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--spec', default='wrn-40-2')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--mode', default='train', choices=bench.MODES)
  p.add_argument('--dtype', default='float32', choices=bench.DTYPES)
  p.add_argument('--xla_options', default='', help="as the bench ('' compiles as training does)")
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--by', default='kind', choices=('kind', 'op'))
  p.add_argument('--top', type=int, default=15)
  p.add_argument('--hlo_out', default='/tmp/jaxbud/profile_step.hlo.txt')
  args = p.parse_args()
  if jax.default_backend() != 'cpu':
    p.error('this script reads XLA:CPU thunk events; on GPU/TPU use jax.profiler with xprof')
  if args.steps < 1:
    p.error('--steps must be at least 1')
  named = bench.parse_spec(args.spec)
  options = dict(bench.resolve_xla_options(args.xla_options) or {},
                 xla_cpu_enable_xprof_traceme=True)
  size, classes = bench.default_image_size(named.spec), bench.default_num_classes(named.spec)
  case = bench._cases(named.spec, (args.mode,), args.batch, args.dtype, size, classes,  # pylint: disable=protected-access
                      options)[0][0]
  for _ in range(args.warmup):
    case.call()
  os.makedirs(os.path.dirname(os.path.abspath(args.hlo_out)), exist_ok=True)
  with open(args.hlo_out, 'w') as f:
    f.write(case.compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      wall = [case.call() for _ in range(args.steps)]
    secs, count = op_times(d, args.by)
  total = sum(secs.values())
  print(f'{named.label} {args.mode} b{args.batch} {args.dtype} on {jax.devices()[0].device_kind}: '
        f'{args.steps} traced steps, wall {min(wall):.3f}-{max(wall):.3f} s per step; '
        f'XLA-thread op time {total / args.steps * 1e3:.1f} ms per step')
  print(f'{"op" if args.by == "op" else "op kind":<40} {"ms/step":>9} {"share":>6} {"n/step":>7}')
  for key, s in secs.most_common(args.top):
    print(f'{key[:40]:<40} {s / args.steps * 1e3:>9.1f} {s / total:>6.1%} '
          f'{count[key] / args.steps:>7.0f}')
  print(f'optimised HLO: {args.hlo_out}')


if __name__ == '__main__':
  main()
