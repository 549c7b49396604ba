r"""Training and inference timings for one GPU: WRN-40-2 and DenseNet-BC-100, float32 and bfloat16.

A plain launch.bench sweep; the offline GPU benchmark with the PyTorch peer and the training
loop is scripts/gpu_bench.sh (docs/gpu.md).

  python -m launch.bench --config=configs/bench_gpu.py --config.bench.batch_sizes='(128,)'
  python -m launch.bench --config=configs/bench_gpu.py:smoke   # tiny, for a CPU dry run

Modes infer, train and fisher (the train step plus Fisher accumulation) for every spec, batch size
and dtype; each (spec, batch, dtype) is compiled once per mode and timed round-robin. Few
repeats: a GPU step of these networks takes milliseconds, compilation is most of the wall time.
"""
from configs import bench


def get_config(arg=None):
  """arg: None for the GPU sweep, 'smoke' for a seconds-long CPU check of the same pipeline."""
  if arg not in (None, '', 'smoke'):
    raise ValueError(f"configs/bench_gpu.py takes no argument or ':smoke', got {arg!r}")
  c = bench.get_config()
  c.bench = bench.bench_section(
      specs=('wrn-40-2', 'densenet_bc-100-12'),
      batch_sizes=(1, 32, 128, 256),
      dtypes=('float32', 'bfloat16'),
      repeats=6,
      warmup=2,
      peak_n=8192,  # a 2048 matmul is too small to load an H100/H200
      out_dir='/tmp/jaxbud/bench_gpu',
  )
  if arg == 'smoke':
    c.bench.update(specs=('wrn-10-1',), batch_sizes=(2,), repeats=1, warmup=0, peak_n=128,
                   image_size=8,
                   xla_options='xla_backend_optimization_level=0',  # CPU: ~2x faster compiles
                   out_dir='/tmp/jaxbud/bench_gpu_smoke')
  return c
