r"""Timing of jitted inference, train and Fisher prune steps (see jaxbud.bench).

  python -m launch.bench --config=configs/bench.py --config.bench.batch_sizes='(1,128)'
  python -m launch.bench --config=configs/bench_reduced_vs_pruned.py \
      --config.bench.runtime=onnxruntime
  python -m launch.bench --config=configs/bench.py \
      --config.bench.specs="('wrn-40-2','runs/prune/snapshots/1000000')" \
      --config.bench.modes="('infer',)"

Specs are names ('wrn-40-2', 'densenet_bc-100-12', 'resnet-50'), spec.json files, folders holding
spec.json (prune snapshots, train workdirs) or inline spec JSON ('label={...}').
"""
import ml_collections


def bench_section(**overrides):
  """The bench settings shared by every bench config."""
  b = ml_collections.ConfigDict(dict(
      specs=('wrn-40-2', 'densenet_bc-100-12'),
      batch_sizes=(1, 32, 128),
      dtypes=('float32',),          # float32 | bfloat16 (compute dtype; params stay float32)
      modes=('infer', 'train', 'fisher'),
      repeats=6,                    # timed calls per case (round-robin, order rotated)
      warmup=1,                     # untimed calls after compilation
      primed=True,                  # an untimed call of the same mode before each timed one
      pipelined_steps=0,            # >0: also time this many calls back to back, one sync
      image_size=0,                 # 0: 32 for CIFAR families, 224 for resnet
      num_classes=0,                # 0: 10 for CIFAR families, 1000 for resnet
      measure_peak=True,            # time a peak_n^2 float matmul as the FLOP/s reference
      peak_n=2048,
      xla_options='',               # '': jaxbud's (as training), 'xla': XLA's, or 'name=value;...'
      runtime='xla',                # xla | onnxruntime: XLA inference beside the exported ONNX
                                    # model in onnxruntime (CPU), see jaxbud.bench_runtime
      out_dir='/tmp/jaxbud/bench',  # bench.json and bench.csv go here
  ))
  b.update(overrides)
  return b


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.bench = bench_section()
  return c
