r"""Times inference, train and Fisher prune steps per spec and batch size; writes JSON and CSV.

  python -m launch.bench --config=configs/bench.py --config.bench.batch_sizes='(1,128)'
  python -m launch.bench --config=configs/bench_reduced_vs_pruned.py
"""
from jaxbud import bench
from jaxbud import cli

_CONFIG = cli.define_config('Config file (configs/bench*.py).')


def main(argv):
  del argv
  bcfg = _CONFIG.value.bench
  rows = bench.run(bcfg)
  print()
  print(bench.format_table(rows))
  for line in bench.fisher_overheads(rows):
    print(line)
  json_path, csv_path = bench.write(rows, bcfg.out_dir)
  print(f'wrote {json_path} and {csv_path}')


if __name__ == '__main__':
  cli.run(main)
