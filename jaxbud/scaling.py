"""Train-step throughput at one global batch over 1, 2, 4 ... forced CPU devices.

The device count of a process is fixed when XLA starts, so each count runs in its own
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N` (and JAX_PLATFORMS=cpu).
There `jaxbud.bench` compiles and times the library's train step in the library's layout (one
mesh, params replicated, the batch sharded on 'data'), so each device computes batch / N rows and
the gradients are all-reduced across devices. The global batch is the same for every count.

Forced CPU devices share the machine's cores: the table shows what partitioning a step over N
devices costs or gains on this host (XLA:CPU runs each device's work with fewer threads, plus the
cross-device reductions), not what N real accelerators would give.

  python -m launch.bench_scaling --config=configs/bench_scaling.py
"""
import json
import os
import re
import subprocess
import sys

from jaxbud import bench
from jaxbud.errors import UsageError

_FORCE = re.compile(r'--xla_force_host_platform_device_count=\S*')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # jaxbud importable there


def check_settings(scfg):
  counts = tuple(scfg.device_counts)
  if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in counts):
    raise UsageError(f'scaling.device_counts must be integers >= 1, got {counts!r}')
  bad = [n for n in counts if scfg.batch_size % n]
  if scfg.batch_size < 1 or bad:
    raise UsageError(f'scaling.batch_size={scfg.batch_size} must split evenly over every device '
                     f'count; it does not over {bad}')
  bench.check_settings(('train',), (scfg.batch_size,), (scfg.dtype,), scfg.repeats, scfg.warmup,
                       scfg.image_size, scfg.num_classes)
  bench.parse_spec(scfg.spec)


def _env(n: int) -> dict:
  flags = _FORCE.sub('', os.environ.get('XLA_FLAGS', '')).split()
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=' '.join(flags + [f'--xla_force_host_platform_device_count={n}']))


def run(scfg, log=print) -> list[dict]:
  """One bench row per device count (see the module docstring), in the order of the config."""
  check_settings(scfg)
  os.makedirs(scfg.out_dir, exist_ok=True)
  settings = {k: scfg[k] for k in ('spec', 'batch_size', 'dtype', 'repeats', 'warmup',
                                   'image_size', 'num_classes')}
  rows = []
  for n in scfg.device_counts:
    path = os.path.join(scfg.out_dir, f'devices_{n}.json')
    if log:
      log(f'{n} device(s): timing in a subprocess ...')
    proc = subprocess.run([sys.executable, '-m', 'jaxbud.scaling', json.dumps(settings), path],
                          env=_env(n), cwd=_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f'the {n}-device run failed (exit {proc.returncode}):\n'
                         f'{proc.stderr[-3000:]}')
    with open(path) as f:
      row = json.load(f)
    if row['device_count'] != n or row['devices_used'] != n:
      raise RuntimeError(f'asked for {n} devices, the run had {row["device_count"]} and used '
                         f'{row["devices_used"]} (is XLA_FLAGS honoured on this backend?)')
    rows.append(row)
  base = rows[0]['images_per_s'] / rows[0]['device_count']
  for r in rows:
    r['per_device_batch'] = r['batch_size'] // r['device_count']
    r['speedup_vs_first'] = r['images_per_s'] / rows[0]['images_per_s']
    r['scaling_efficiency'] = r['images_per_s'] / (base * r['device_count'])
  return rows


def format_table(rows: list[dict]) -> str:
  """devices | per-device batch | compile s | median step s | images/s | speedup."""
  lines = [f'{"devices":>7} {"batch/dev":>9} {"compile_s":>9} {"median_s":>9} {"min_s":>8} '
           f'{"max_s":>8} {"img/s":>9} {"speedup":>7}']
  for r in rows:
    lines.append(f'{r["device_count"]:>7} {r["per_device_batch"]:>9} {r["compile_s"]:>9.2f} '
                 f'{r["median_s"]:>9.4f} {r["min_s"]:>8.4f} {r["max_s"]:>8.4f} '
                 f'{r["images_per_s"]:>9.1f} {r["speedup_vs_first"]:>6.2f}x')
  return '\n'.join(lines)


def _child(settings_json: str, path: str):
  """Inside the subprocess: one train-step bench row on all of this process's devices."""
  s = json.loads(settings_json)
  rows = bench.bench_spec(bench.parse_spec(s['spec']), batch_sizes=(s['batch_size'],),
                          dtypes=(s['dtype'],), modes=('train',), repeats=s['repeats'],
                          warmup=s['warmup'], image_size=s['image_size'],
                          num_classes=s['num_classes'], log=None)
  with open(path, 'w') as f:
    json.dump(rows[0], f, indent=1)


if __name__ == '__main__':
  _child(*sys.argv[1:])
