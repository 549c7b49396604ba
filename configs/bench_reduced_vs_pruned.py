r"""RQ3 in one command: inference speed of a reduced WRN vs a pruned WRN-40-2 of equal size.

  python -m launch.bench --config=configs/bench_reduced_vs_pruned.py

Specs timed (inference, batch 1 and 128):
- 'wrn-40-1': the reduced network (half the width, trained from scratch in the paper).
- 'wrn-40-2-z<Z>': WRN-40-2 with every inner width scaled by one Z (int(w * Z), the paper's
  bottleneck family), Z picked as the closest to the reduced net's parameter count.
- 'pruned-like-wrn-40-2': a STAND-IN for a Fisher-pruned WRN-40-2 until a real snapshot is
  given. It keeps WRN-40-2's stage widths (32, 64, 128) and gives the inner widths a
  non-uniform profile: within each stage the inner width falls linearly from 100% of the stage
  width (first block) to 25% (last block), and the whole profile is scaled by one factor so the
  parameter count is within 1% of the reduced net's. What matters for RQ3 is that a pruned
  network keeps the wide residual stream and has ragged inner widths; the exact profile of a
  real run differs. Time real snapshots with
      --config.bench.specs="('wrn-40-1','runs/prune/snapshots/563930')"
"""
from configs import bench
from jaxbud import spec as spec_lib

REDUCED = 'wrn-40-1'
RAMP = (1.0, 0.25)  # inner width share of the stage width at the first and last block


def _closest(make, target, lo=0.0, hi=1.0, steps=60):
  """The spec from make(s), s in [lo, hi], whose parameter count is nearest `target`."""
  for _ in range(steps):  # parameter count is monotone in s: bisect
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if spec_lib.count_params(make(mid)) < target else (lo, mid)
  return min((make(lo), make(hi)), key=lambda s: abs(spec_lib.count_params(s) - target))


def pruned_like(target: int) -> spec_lib.WRNSpec:
  """WRN-40-2 stage widths, ramped inner widths scaled to `target` parameters (see above)."""
  base = spec_lib.wrn(40, 2)
  n = base.blocks_per_stage
  share = [RAMP[0] + (RAMP[1] - RAMP[0]) * j / (n - 1) for _ in range(3) for j in range(n)]
  profile = [w * f for w, f in zip(base.inner, share)]
  spec = _closest(lambda s: base.with_prunable(max(1, round(s * p)) for p in profile), target)
  got = spec_lib.count_params(spec)
  if abs(got - target) > 0.01 * target:
    raise ValueError(f'pruned-like spec has {got} params, not within 1% of {target}')
  return spec


def bottleneck_scaled(target: int) -> tuple[float, spec_lib.WRNSpec]:
  """WRN-40-2 with inner widths max(1, int(w * Z)) for the Z nearest `target` parameters."""
  base = spec_lib.wrn(40, 2)
  spec = _closest(lambda z: base.with_prunable(max(1, int(w * z)) for w in base.inner), target)
  return spec.inner[0] / base.inner[0], spec


def get_config(arg=None):
  c = bench.get_config(arg)
  target = spec_lib.count_params(spec_lib.wrn(40, 1))
  z, scaled = bottleneck_scaled(target)
  c.bench.update(
      specs=(REDUCED,
             f'wrn-40-2-z{z:.3g}={spec_lib.to_json(scaled)}',
             f'pruned-like-wrn-40-2={spec_lib.to_json(pruned_like(target))}'),
      batch_sizes=(1, 128),
      modes=('infer',),
      repeats=10,
      warmup=2,
      out_dir='/tmp/jaxbud/bench_reduced_vs_pruned',
  )
  return c
