r"""Train-step throughput of WRN-40-2 (CIFAR size) at global batch 128 on 1, 2 and 4 forced CPU
devices, each count in its own process (see jaxbud.scaling).

  python -m launch.bench_scaling --config=configs/bench_scaling.py
  python -m launch.bench_scaling --config=configs/bench_scaling.py \
      --config.scaling.device_counts='(1,2)' --config.scaling.spec=wrn-16-1
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.scaling = ml_collections.ConfigDict(dict(
      device_counts=(1, 2, 4),  # one subprocess each (forced CPU devices through XLA_FLAGS)
      spec='wrn-40-2',          # any jaxbud.bench spec form (name, spec.json, snapshot folder)
      batch_size=128,           # the global batch, the same for every device count
      dtype='float32',
      image_size=0,             # 0: 32 for CIFAR families, 224 for resnet
      num_classes=0,            # 0: 10 for CIFAR families, 1000 for resnet
      repeats=10,               # timed train steps per device count (median reported)
      warmup=2,                 # untimed steps after compilation
      out_dir='/tmp/jaxbud/bench_scaling',  # devices_<N>.json and scaling.json
  ))
  return c
