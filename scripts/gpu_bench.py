r"""The GPU benchmark: jaxbud against its PyTorch peer on one GPU, and the whole training loop.

  bash scripts/gpu_bench.sh                      # the way to run it (sets up, then runs this)
  python scripts/gpu_bench.py --out=DIR          # every stage, most wanted first
  python scripts/gpu_bench.py --out=DIR --stages=jax_wrn_bf16,torch_wrn
  python scripts/gpu_bench.py --out=DIR --small  # tiny networks and batches: a CPU dry run

Each stage runs in its own Python process with its own timeout (a failure, an out-of-memory or
a timeout loses that stage alone) and appends its records to <work>/<stage>.jsonl as it
measures them, so even a stage cut off keeps what it finished. After every stage the driver
rewrites <out>/gpu_bench.json (all records so far, each with its stage) and appends the
stage's output to <out>/logs.txt; at the end it prints the summary (also <out>/summary.txt).
No stage starts once fewer than --min_stage_s seconds are left before --deadline (a Unix time).
The driver itself never imports jax or torch, so it holds no GPU memory while stages run.

Timings: jaxbud's `synced` time is one call followed by a sync (jaxbud.bench's median);
`pipelined` is N calls back to back with one sync, as a training loop runs; compile times
apart. The torch peer (scripts/torch_peer.py) reports the same two.
"""
import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (spec, batch) per network: the paper's batch sizes; --small swaps in tiny ones.
NETS = {'wrn': ('wrn-40-2', 128), 'densenet': ('densenet_bc-100-12', 64)}
SMALL_NETS = {'wrn': ('wrn-10-1', 8), 'densenet': ('densenet_bc-10-4', 8)}
LARGE_BATCH, SMALL_LARGE_BATCH = 1024, 32
TORCH_MODES = ('bf16_cl', 'compile_bf16_cl', 'eager_f32')  # the target's peer first
TORCH_LABELS = {'bf16_cl': 'torch bf16 cl', 'compile_bf16_cl': 'torch compile',
                'eager_f32': 'torch eager'}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every stage reads: sizes (full or --small) and where records go."""
  work: str
  small: bool

  @property
  def nets(self):
    return SMALL_NETS if self.small else NETS

  @property
  def image_size(self):
    return 16 if self.small else 32

  @property
  def large_batch(self):
    return SMALL_LARGE_BATCH if self.small else LARGE_BATCH

  @property
  def steps(self):  # pipelined calls per run
    return 3 if self.small else 50

  @property
  def repeats(self):  # synced calls timed
    return 2 if self.small else 6

  def emit(self, stage: str, records):
    """Appends records (dicts) to the stage's JSONL file at once."""
    with open(os.path.join(self.work, f'{stage}.jsonl'), 'a') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')


# --- jaxbud stages (each runs in its own process) ------------------------------------------

def _jax_rows(s: Settings, stage, spec, batch, dtypes, modes, variant=None, **kw):
  from jaxbud import bench  # pylint: disable=import-outside-toplevel
  for dtype in dtypes:  # one dtype at a time: its rows are on disk before the next compiles
    rows = bench.bench_spec(bench.parse_spec(spec), batch_sizes=(batch,), dtypes=(dtype,),
                            modes=modes, repeats=s.repeats, warmup=2, image_size=s.image_size,
                            pipelined_steps=s.steps, log=None, **kw)
    for r in rows:
      r.update(framework='jaxbud', kind='step', variant=variant or 'jaxbud')
      r.pop('spec_json', None)
    s.emit(stage, rows)


def _peak(s: Settings, stage):
  from jaxbud import bench  # pylint: disable=import-outside-toplevel
  for dtype in ('bfloat16', 'float32'):
    p = bench.peak_matmul(128 if s.small else 8192, dtype)
    s.emit(stage, [{'kind': 'peak', **p}])


def stage_jax_wrn_bf16(s, stage):
  _peak(s, stage)
  _jax_rows(s, stage, *s.nets['wrn'], ('bfloat16',), ('train', 'fisher', 'infer'))


def stage_jax_densenet_bf16(s, stage):
  _jax_rows(s, stage, *s.nets['densenet'], ('bfloat16',), ('train', 'fisher', 'infer'))


def stage_jax_f32(s, stage):
  for net in ('wrn', 'densenet'):
    _jax_rows(s, stage, *s.nets[net], ('float32',), ('train', 'fisher', 'infer'))


def stage_jax_batch1(s, stage):
  for net in ('wrn', 'densenet'):
    _jax_rows(s, stage, s.nets[net][0], 1, ('bfloat16', 'float32'), ('infer',))


def stage_jax_large_batch(s, stage):
  _jax_rows(s, stage, s.nets['wrn'][0], s.large_batch, ('bfloat16', 'float32'), ('train',))


def stage_plain_xla(s, stage):
  """jaxbud's CPU-tuned pieces against plain XLA code on this backend (see models.PLAIN_XLA).

  'jaxbud': as shipped; 'plain': flax BatchNorm and jnp.sum (models.plain_xla);
  'xla_options': XLA's own compile options (on the CPU YNNPACK back on; elsewhere jaxbud sets
  none, so it is the same program as 'jaxbud').
  """
  from jaxbud import models  # pylint: disable=import-outside-toplevel
  for net in ('wrn', 'densenet'):
    spec, batch = s.nets[net]
    modes = ('train', 'fisher')
    _jax_rows(s, stage, spec, batch, ('bfloat16',), modes, variant='jaxbud')
    with models.plain_xla():
      _jax_rows(s, stage, spec, batch, ('bfloat16',), modes, variant='plain')
    _jax_rows(s, stage, spec, batch, ('bfloat16',), modes, variant='xla_options',
              xla_options='xla')


def stage_rq3(s, stage):
  """configs/bench_reduced_vs_pruned.py's three networks, inference at batch 1 and 128."""
  from configs import bench_reduced_vs_pruned  # pylint: disable=import-outside-toplevel
  b = bench_reduced_vs_pruned.get_config().bench
  batches = (1, 8) if s.small else tuple(b.batch_sizes)
  for dtype in ('float32', 'bfloat16'):
    for spec in b.specs:
      for batch in batches:
        _jax_rows(s, stage, spec, batch, (dtype,), ('infer',))


def stage_loop_wrn_bf16(s, stage):
  """launch.train's loop on synthetic data against its bare step, and the paper's runs
  projected from the rates (jaxbud.loop_bench, configs/bench_loop.py)."""
  from configs import bench_loop  # pylint: disable=import-outside-toplevel
  from jaxbud import loop_bench  # pylint: disable=import-outside-toplevel
  c = bench_loop.get_config('cpu' if s.small else None)
  if s.small:
    c.model.depth = 10
    c.data.synthetic.update(train_size=320, test_size=64, image_size=s.image_size)
    c.train.update(batch_size=8, eval_batch_size=32, log_every_steps=10)
    c.loop.bare_steps = 3
  workdir = os.path.join(s.work, stage)
  result = loop_bench.measure(c, workdir, c.loop.bare_steps, c.loop.repeats, log=print)
  s.emit(stage, [{'kind': 'loop', 'framework': 'jaxbud', **result}])
  projections = loop_bench.project(result, c.projection)  # CIFAR-10's 50,000 images
  s.emit(stage, [{'kind': 'projection', 'framework': 'jaxbud', 'measured_spec': result['spec'],
                  'dtype': result['dtype'], **p} for p in projections])


def stage_profile_wrn_bf16(s, stage):
  """Where the bf16 train step's time goes: device time per kernel from a profiler trace."""
  import collections  # pylint: disable=import-outside-toplevel
  import glob  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jaxbud import bench  # pylint: disable=import-outside-toplevel
  spec, batch = s.nets['wrn']
  named = bench.parse_spec(spec)
  cases, _ = bench._cases(named.spec, ('train',), batch, 'bfloat16', s.image_size, 10,  # pylint: disable=protected-access
                          bench.resolve_xla_options('') or None)
  (case,) = cases
  case.pipelined(3)
  trace_dir = os.path.join(s.work, 'trace')
  steps = 5
  with jax.profiler.trace(trace_dir):
    case.pipelined(steps)
  (path,) = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)[:1]
  shutil.copy(path, os.path.join(s.work, 'profile_wrn_bf16.xplane.pb'))
  data = jax.profiler.ProfileData.from_file(path)
  secs, count, names = collections.Counter(), collections.Counter(), set()
  device_planes = [p for p in data.planes if p.name.startswith('/device:')]
  for plane in device_planes or data.planes:
    lines = list(plane.lines)
    # GPU: the kernels of each CUDA stream (other lines, if any, summarise them); CPU: the
    # events of XLA's threads.
    lines = ([l for l in lines if l.name.startswith('Stream')] or lines if device_planes
             else [l for l in lines if l.name.startswith('tf_XLA')])
    for line in lines:
      names.add(f'{plane.name}: {line.name}')
      for ev in line.events:
        secs[ev.name[:90]] += ev.duration_ns / 1e9 / steps
        count[ev.name[:90]] += 1
  total = sum(secs.values())
  s.emit(stage, [{'kind': 'profile', 'spec': spec, 'batch_size': batch, 'dtype': 'bfloat16',
                  'op': name, 'ms_per_step': t * 1e3, 'share': t / total if total else None,
                  'calls_per_step': count[name] / steps,
                  'lines': sorted(names)[:20]}
                 for name, t in secs.most_common(25)])


# --- torch stages (no jax in these processes) -----------------------------------------------

def _torch(s, stage, spec, batch, modes=TORCH_MODES, ops=('train', 'infer')):
  sys.path.insert(0, os.path.join(ROOT, 'scripts'))
  import torch_peer  # pylint: disable=import-outside-toplevel
  torch_peer.main(['--spec', spec, '--batch', str(batch), '--size', str(s.image_size),
                   '--modes', ','.join(modes), '--ops', ','.join(ops),
                   '--steps', str(s.steps), '--repeats', str(2 * s.repeats),
                   '--out', os.path.join(s.work, f'{stage}.jsonl')])


def stage_torch_wrn(s, stage):
  _torch(s, stage, *s.nets['wrn'])


def stage_torch_densenet(s, stage):
  _torch(s, stage, *s.nets['densenet'])


def stage_torch_batch1_large(s, stage):
  for net in ('wrn', 'densenet'):
    _torch(s, stage, s.nets[net][0], 1, ops=('infer',))
  _torch(s, stage, s.nets['wrn'][0], s.large_batch, modes=('bf16_cl', 'compile_bf16_cl'),
         ops=('train',))


# Most wanted first: the targets (bf16 train vs torch.compile, Fisher overhead, loop overhead
# and the projections), then the comparisons around them. (name, timeout in seconds)
STAGES = (
    ('jax_wrn_bf16', 150), ('torch_wrn', 180), ('jax_densenet_bf16', 180),
    ('torch_densenet', 180), ('loop_wrn_bf16', 180), ('plain_xla', 150), ('jax_f32', 180),
    ('jax_batch1', 90), ('jax_large_batch', 90), ('torch_batch1_large', 180), ('rq3', 120),
    ('profile_wrn_bf16', 60),
)
STAGE_NAMES = tuple(n for n, _ in STAGES)


# --- the driver ----------------------------------------------------------------------------

def read_records(work: str, stage: str) -> list[dict]:
  path = os.path.join(work, f'{stage}.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [{'stage': stage, **json.loads(l)} for l in f if l.strip()]


def run_stage(name, timeout, args, log_file) -> tuple[str, float]:
  """Runs one stage in a new process group; (status, seconds). A timeout kills the group."""
  cmd = [sys.executable, os.path.abspath(__file__), '--stage', name, '--work', args.work]
  if args.small:
    cmd.append('--small')
  start = time.time()
  with open(log_file, 'w') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout)
      status = 'ok' if rc == 0 else f'failed (exit {rc})'
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)  # torch.compile's workers too
      proc.wait()
      status = f'timeout ({timeout:.0f} s)'
  return status, time.time() - start


def _ms(v):
  return f'{v * 1e3:9.2f}' if v else f'{"-":>9}'


def summary(records: list[dict]) -> str:
  """The printed result: step times side by side, the targets, the loop and projections."""
  steps = [r for r in records if r.get('kind') == 'step' and r.get('framework') == 'jaxbud']
  torch = [r for r in records if r.get('framework') == 'torch']
  lines = ['== step times, ms per step (pipelined: N calls, one sync | synced: each call) ==',
           f'{"network":<24} {"batch":>5} {"op":<6} {"dtype":<8} {"who":<13} '
           f'{"pipelined":>9} {"synced":>9} {"compile_s":>9} {"img/s":>9}']
  for r in steps:
    lines.append(f'{r["spec"][:24]:<24} {r["batch_size"]:>5} {r["mode"]:<6} {r["dtype"]:<8} '
                 f'{r.get("variant", "jaxbud"):<13} {_ms(r.get("pipelined_s"))} '
                 f'{_ms(r["median_s"])} {r["compile_s"]:>9.1f} '
                 f'{r.get("pipelined_images_per_s") or r["images_per_s"]:>9.0f}')
  for r in torch:
    lines.append(f'{r["spec"][:24]:<24} {r["batch_size"]:>5} {r["op"]:<6} {r["dtype"]:<8} '
                 f'{TORCH_LABELS.get(r["mode"], r["mode"]):<13} {_ms(r["pipelined_s"])} '
                 f'{_ms(r["synced_s"])} {r["first_call_s"]:>9.1f} {r["images_per_s"]:>9.0f}')
  profile = [r for r in records if r.get('kind') == 'profile'][:12]
  if profile:
    r = profile[0]
    lines += ['', f'== where the time goes: {r["spec"]} b{r["batch_size"]} {r["dtype"]} train '
                  'step, ms per step (profiler trace) ==']
    lines += [f'{r["ms_per_step"]:8.3f} {r["share"]:6.1%}  {r["op"]}' for r in profile]
  lines += stage_lines(records) + ['', '== loop, projections, targets ==']
  loops = [r for r in records if r.get('kind') == 'loop']
  for r in loops:
    lines.append(f'loop ({r["dtype"]}, batch {r["batch_size"]}): {r["loop_steps_per_s"]:.2f} '
                 f'steps/s vs bare step {r["bare_steps_per_s"]:.2f}: overhead '
                 f'{r["loop_overhead"]:+.1%}; Fisher/train (bare, pipelined) '
                 f'{r["fisher_vs_train"]:.3f}')
  for r in records:
    if r.get('kind') == 'projection':
      lines.append(f'projected {r["what"]}: {r["seconds"] / 60:.1f} min ({r["how"]})')
  lines += targets(steps, torch, records)  # last: the end of the output is what comes back
  return '\n'.join(lines)


def _find(rows, **kw):
  return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def targets(steps, torch, records) -> list[str]:
  out = []
  for net in ('wrn', 'densenet'):
    specs = {NETS[net][0]: NETS[net][1], SMALL_NETS[net][0]: SMALL_NETS[net][1]}
    for spec, batch in specs.items():
      jb = _find(steps, spec=spec, batch_size=batch, mode='train', dtype='bfloat16',
                 variant='jaxbud')
      tc = _find(torch, spec=spec, batch_size=batch, op='train', mode='compile_bf16_cl')
      if jb and tc:
        ratio = jb['pipelined_s'] / tc['pipelined_s']
        out.append(f'jaxbud bf16 train / torch.compile bf16 channels_last, {spec} b{batch}: '
                   f'{ratio:.2f}x ({"met" if ratio <= 1 else "NOT met"}: target <= 1)')
      for dtype in ('bfloat16', 'float32'):
        f = _find(steps, spec=spec, batch_size=batch, mode='fisher', dtype=dtype,
                  variant='jaxbud')
        if f and f.get('pipelined_vs_train'):
          v = f['pipelined_vs_train']
          out.append(f'Fisher / train step, {spec} b{batch} {dtype}: {v:.3f} pipelined, '
                     f'{f["vs_train"]:.3f} synced ({"met" if v < 1.05 else "NOT met"}: '
                     f'target < 1.05)')
  for r in records:
    if r.get('kind') == 'loop':
      v = r['loop_overhead']
      out.append(f'loop overhead over the bare step: {v:+.1%} '
                 f'({"met" if v < 0.05 else "NOT met"}: target < +5%)')
    if r.get('kind') == 'projection' and r['what'].startswith('train'):
      mins = r['seconds'] / 60
      out.append(f'moonshot, {r["what"]} at the loop\'s rate: {mins:.1f} min '
                 f'({"met" if mins < 10 else "NOT met"}: target < 10 min)')
  large = [r for r in steps if r['mode'] == 'train' and r['batch_size'] in
           (LARGE_BATCH, SMALL_LARGE_BATCH) and r.get('pipelined_s')]
  for r in large:
    mins = 200 * 50_000 / r['pipelined_images_per_s'] / 60
    out.append(f'200 CIFAR epochs at the bare b{r["batch_size"]} {r["dtype"]} throughput '
               f'({r["pipelined_images_per_s"]:.0f} img/s; not the paper\'s batch): '
               f'{mins:.1f} min')
  return out


def stage_lines(records) -> list[str]:
  done = [r for r in records if r.get('kind') == 'stage']
  return ['', '== stages =='] + [f'{r["stage"]:<20} {r["status"]:<22} {r["seconds"]:6.0f} s'
                                 for r in done]


def write_json(out: str, records: list[dict]):
  tmp = os.path.join(out, 'gpu_bench.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(records, f, indent=1)
  os.replace(tmp, os.path.join(out, 'gpu_bench.json'))


def drive(args) -> int:
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.work, exist_ok=True)
  names = args.stages.split(',') if args.stages else list(STAGE_NAMES)
  unknown = [n for n in names if n not in STAGE_NAMES]
  if unknown:
    raise SystemExit(f'error: unknown stage(s) {unknown}; expected some of {STAGE_NAMES}')
  timeouts = dict(STAGES)
  records, failed = [], 0
  for name in names:
    left = args.deadline - time.time()
    if left < args.min_stage_s:
      records.append({'stage': name, 'kind': 'stage', 'status': 'skipped (time)',
                      'seconds': 0.0})
      print(f'[gpu_bench] {name}: skipped, {left:.0f} s left', flush=True)
      continue
    open(os.path.join(args.work, f'{name}.jsonl'), 'w').close()
    log_file = os.path.join(args.work, f'{name}.log')
    timeout = min(timeouts[name] * args.timeout_scale, left)
    print(f'[gpu_bench] {name}: started ({timeout:.0f} s at most)', flush=True)
    status, secs = run_stage(name, timeout, args, log_file)
    got = read_records(args.work, name)
    trace = os.path.join(args.work, f'{name}.xplane.pb')
    if os.path.exists(trace) and os.path.getsize(trace) < 16 << 20:  # what $OUT can return
      shutil.copy(trace, args.out)
    failed += status != 'ok'
    records += got + [{'stage': name, 'kind': 'stage', 'status': status, 'seconds': secs,
                       'records': len(got)}]
    write_json(args.out, records)
    with open(log_file) as f, open(os.path.join(args.out, 'logs.txt'), 'a') as logs:
      text = f.read()
      logs.write(f'===== {name}: {status}, {secs:.0f} s\n{text}\n')
    tail = '' if status == 'ok' else '\n    ' + '\n    '.join(text.strip().splitlines()[-5:])
    print(f'[gpu_bench] {name}: {status}, {secs:.0f} s, {len(got)} records{tail}', flush=True)
  write_json(args.out, records)
  text = summary(records)
  with open(os.path.join(args.out, 'summary.txt'), 'w') as f:
    f.write(text + '\n')
  print('\n' + text, flush=True)
  return 1 if failed else 0


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--out', default='out', help='gpu_bench.json, logs.txt, summary.txt')
  p.add_argument('--work', default='/tmp/jaxbud_gpu_bench',
                 help='per-stage records, logs, run folders')
  p.add_argument('--stages', default='', help=f'comma-separated subset of {STAGE_NAMES}')
  p.add_argument('--small', action='store_true', help='tiny sizes: a CPU dry run')
  p.add_argument('--deadline', type=float, default=0.0,
                 help='Unix time after which no stage runs (default: now + 450 s)')
  p.add_argument('--min_stage_s', type=float, default=20.0)
  p.add_argument('--timeout_scale', type=float, default=1.0, help='x every stage timeout')
  p.add_argument('--stage', default='', help=argparse.SUPPRESS)  # run one stage (internal)
  args = p.parse_args()
  if args.stage:
    stage_fn = globals()[f'stage_{args.stage}']
    stage_fn(Settings(args.work, args.small), args.stage)
    return 0
  args.deadline = args.deadline or time.time() + 450
  return drive(args)


if __name__ == '__main__':
  sys.exit(main())
