r"""Times inference, train and Fisher prune steps per spec and batch size; writes JSON and CSV.

  python -m launch.bench --config=configs/bench.py --config.bench.batch_sizes='(1,128)'
  python -m launch.bench --config=configs/bench_reduced_vs_pruned.py
  python -m launch.bench --config=configs/bench_reduced_vs_pruned.py \
      --config.bench.runtime=onnxruntime   # XLA beside onnxruntime, inference only
"""
from jaxbud import bench
from jaxbud import bench_runtime
from jaxbud import cli

_CONFIG = cli.define_config('Config file (configs/bench*.py).')


def main(argv):
  del argv
  bcfg = _CONFIG.value.bench
  if bcfg.runtime != 'xla':
    rows = bench_runtime.run(bcfg)
    print()
    print(bench_runtime.format_table(rows))
    print('\n'.join(f'wrote {p}' for p in bench.write(rows, bcfg.out_dir, 'bench_runtime')))
    return
  rows = bench.run(bcfg)
  print()
  print(bench.format_table(rows))
  for line in bench.fisher_overheads(rows):
    print(line)
  json_path, csv_path = bench.write(rows, bcfg.out_dir)
  print(f'wrote {json_path} and {csv_path}')


if __name__ == '__main__':
  cli.run(main)
