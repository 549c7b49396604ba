"""The benchmark harness on a tiny WRN: row contents, spec parsing, files, launcher errors."""
import csv
import json
import os
import subprocess
import sys

import pytest

from configs import bench as bench_config
from configs import bench_reduced_vs_pruned
from jaxbud import bench
from jaxbud import parallel
from jaxbud import spec as spec_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {'spec', 'family', 'params', 'macs_per_image', 'mode', 'batch_size', 'dtype', 'compile_s',
        'median_s', 'min_s', 'max_s', 'spread', 'images_per_s', 'vs_train', 'xla_flops',
        'xla_flops_over_2macs', 'achieved_gflops', 'peak_gflops', 'peak_fraction',
        'device_kind', 'device_count', 'devices_used', 'backend', 'spec_json'}


@pytest.fixture(scope='module')
def rows():
  peaks = {'float32': bench.peak_matmul(n=128, repeats=2, warmup=1)}
  return bench.bench_spec(bench.parse_spec('wrn-10-1'), batch_sizes=(2,), repeats=2, warmup=1,
                          peaks=peaks, log=None)


def test_rows_have_every_key_and_positive_times(rows):
  assert [r['mode'] for r in rows] == ['infer', 'train', 'fisher']
  for r in rows:
    assert KEYS <= set(r), KEYS - set(r)
    assert r['batch_size'] == 2 and r['dtype'] == 'float32' and r['params'] == 77_850
    assert r['compile_s'] > 0 and 0 < r['min_s'] <= r['median_s'] <= r['max_s']
    assert r['images_per_s'] == pytest.approx(2 / r['median_s'])
    assert r['xla_flops'] > 0 and r['peak_gflops'] > 0
    assert spec_lib.from_json(r['spec_json']) == spec_lib.wrn(10, 1)
  infer, train, fisher = rows
  assert fisher['vs_train'] == pytest.approx(fisher['median_s'] / train['median_s'])
  assert infer['vs_train'] is None and train['vs_train'] is None
  # XLA counts 2 flops per MAC and skips padded taps: a bit under 2 * MACs per image.
  assert 0.8 < infer['xla_flops_over_2macs'] < 1.05
  assert train['xla_flops'] > 2 * infer['xla_flops']  # backward costs about twice the forward


def test_table_and_fisher_lines(rows):
  table = bench.format_table(rows).splitlines()
  assert len(table) == 4 and table[0].split()[:3] == ['spec', 'mode', 'batch']
  assert len({len(line) for line in table}) == 1  # aligned
  (line,) = bench.fisher_overheads(rows)
  assert line.startswith('Fisher step vs train step, wrn-10-1 batch 2 float32: ')


def test_write_json_and_csv(rows, tmp_path):
  json_path, csv_path = bench.write(rows, str(tmp_path / 'out'))
  with open(json_path) as f:
    assert json.load(f) == rows
  with open(csv_path) as f:
    got = list(csv.DictReader(f))
  assert [r['mode'] for r in got] == ['infer', 'train', 'fisher']
  assert got[0]['vs_train'] == '' and float(got[2]['vs_train']) == rows[2]['vs_train']


def test_compare_table_joins_torch_results(rows):
  torch = {('wrn-10-1', 2): {'train_step_s': 0.5, 'infer_s': 0.25}}
  lines = bench.compare_table(rows, torch).splitlines()
  assert len(lines) == 3 and lines[1].split()[:3] == ['wrn-10-1', '2', 'train']
  assert float(lines[1].split()[4]) == 0.5 and float(lines[2].split()[4]) == 0.25


@pytest.mark.parametrize('text, expected', [
    ('wrn-16-1', spec_lib.wrn(16, 1)),
    ('WRN-40-2', spec_lib.wrn(40, 2)),
    ('wrn-28-1.5', spec_lib.wrn(28, 1.5)),
    ('densenet_bc-100-12', spec_lib.densenet_bc(100, 12)),
    ('densenet-bc-40', spec_lib.densenet_bc(40, 12)),
    ('resnet-50', spec_lib.resnet(50)),
])
def test_parse_spec_names(text, expected):
  named = bench.parse_spec(text)
  assert named.spec == expected and named.label == text


def test_parse_spec_files_folders_and_inline_json(tmp_path):
  pruned = spec_lib.wrn(10, 1).with_prunable((3, 5, 0))
  spec_lib.save(pruned, tmp_path / 'spec.json')
  assert bench.parse_spec(str(tmp_path / 'spec.json')).spec == pruned
  assert bench.parse_spec(str(tmp_path)).spec == pruned  # a snapshot folder
  named = bench.parse_spec(f'mine={spec_lib.to_json(pruned)}')
  assert named.spec == pruned and named.label == 'mine'
  assert bench.parse_spec(spec_lib.to_json(pruned)).label == 'wrn-10:custom'


@pytest.mark.parametrize('text, message', [
    ('vgg-16', r"unknown spec 'vgg-16'; expected a name like 'wrn-40-2'"),
    ('wrn-12-1', r'WRN depth must be 6n\+4'),
    ('resnet-51', r'ResNet depth must be one of'),
    ('/no/such/spec.json', r'no spec file or folder at /no/such/spec.json'),
    ('{"family": "vgg"}', r"unknown spec family 'vgg'"),
    ('', r'empty spec entry'),
])
def test_parse_spec_errors(text, message):
  with pytest.raises(ValueError, match=message):
    bench.parse_spec(text)


def test_folder_without_spec_json_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='holds no spec.json'):
    bench.parse_spec(str(tmp_path))


@pytest.mark.parametrize('field, value, message', [
    ('modes', ('infer', 'speed'), r"unknown bench mode 'speed'"),
    ('dtypes', ('float16',), r"unknown bench dtype 'float16'"),
    ('batch_sizes', (0,), r'batch_sizes entries must be integers >= 1'),
    ('specs', (), r'bench.specs is empty'),
])
def test_bad_settings_raise_before_anything_runs(field, value, message):
  c = bench_config.get_config()
  c.bench[field] = value
  with pytest.raises(ValueError, match=message):
    bench.run(c.bench, log=None)


def test_reduced_vs_pruned_config_matches_parameter_counts():
  specs = [bench.parse_spec(s) for s in bench_reduced_vs_pruned.get_config().bench.specs]
  reduced, scaled, pruned = (spec_lib.count_params(n.spec) for n in specs)
  assert reduced == 563_930 and abs(pruned - reduced) <= 0.01 * reduced
  assert abs(scaled - reduced) <= 0.02 * reduced
  assert specs[2].spec.stage_widths == (32, 64, 128) and len(set(specs[2].spec.inner)) > 3


def test_launcher_bad_spec_is_one_line_exit_2(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'launch.bench', '--config=configs/bench.py',
                      "--config.bench.specs=('wrn-40-2','nope-1')",
                      f'--config.bench.out_dir={tmp_path}/out'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: unknown spec 'nope-1'"), lines
  assert not (tmp_path / 'out').exists()


def test_xla_options_parse_and_bad_ones_raise():
  assert bench.parse_xla_options('') == {}
  assert bench.parse_xla_options('xla_cpu_experimental_ynn_fusion_type=; '
                                 'xla_cpu_multi_thread_eigen=false') == {
                                     'xla_cpu_experimental_ynn_fusion_type': '',
                                     'xla_cpu_multi_thread_eigen': False}
  with pytest.raises(ValueError, match='expected name=value with an xla_'):
    bench.parse_xla_options('fast')
  with pytest.raises(ValueError, match='XLA rejected options'):
    bench.parse_xla_options('xla_cpu_experimental_ynn_fusion_type=nonsense')


def test_bench_compiles_like_training_unless_told_otherwise(monkeypatch):
  # On CPU jaxbud compiles its steps with YNNPACK fusions off (jaxbud.parallel); the bench's
  # default is the same, 'xla' gives XLA's own defaults.
  assert bench.resolve_xla_options('') == parallel.CPU_OPTIONS == parallel.compiler_options()
  assert bench.resolve_xla_options('xla') == {}
  assert bench.describe_xla_options({}) == 'xla defaults'
  monkeypatch.setenv('JAXBUD_CPU_YNNPACK', '1')
  parallel.compiler_options.cache_clear()
  try:
    assert parallel.compiler_options() is None and bench.resolve_xla_options('') == {}
  finally:
    parallel.compiler_options.cache_clear()


@pytest.mark.parametrize('primed', [True, False])
def test_call_order_rotates_and_primes(monkeypatch, primed):
  """Every timed call follows an untimed call of its own mode (primed), in a rotating order."""
  calls = []
  original = bench._Case.call  # pylint: disable=protected-access

  def record(case):
    calls.append(case.mode)
    return original(case)

  monkeypatch.setattr(bench._Case, 'call', record)  # pylint: disable=protected-access
  rows = bench.bench_spec(bench.parse_spec('wrn-10-1'), batch_sizes=(2,), repeats=3, warmup=0,
                          modes=('infer', 'train', 'fisher'), primed=primed, log=None)
  rounds = [['infer', 'train', 'fisher'], ['train', 'fisher', 'infer'],
            ['fisher', 'infer', 'train']]
  expected = [m for r in rounds for m in r for _ in range(2 if primed else 1)]
  assert calls == expected
  assert all(r['primed'] is primed and r['repeats'] == 3 for r in rows)


def test_pipelined_timing_carries_the_state_and_syncs_once():
  calls = []

  def step(state, batch):
    calls.append(state)
    return state + batch, {'loss': state}

  secs, args = bench.pipelined_seconds(step, (0, 2), 5, stateful=True)
  assert secs > 0 and args == (10, 2) and calls == [0, 2, 4, 6, 8]
  secs, args = bench.pipelined_seconds(lambda x: x * 2, (3,), 4, stateful=False)
  assert secs > 0 and args == (3,)


def test_rows_with_pipelined_timing():
  rows = bench.bench_spec(bench.parse_spec('wrn-10-1'), batch_sizes=(2,), modes=('train',
                          'fisher'), repeats=1, warmup=0, image_size=8, pipelined_steps=2,
                          pipelined_repeats=1, log=None)
  train, fisher = rows
  for r in rows:
    assert r['pipelined_s'] > 0 and r['pipelined_steps'] == 2
    assert r['pipelined_images_per_s'] == pytest.approx(2 / r['pipelined_s'])
  assert fisher['pipelined_vs_train'] == pytest.approx(fisher['pipelined_s'] / train['pipelined_s'])
  assert train['pipelined_vs_train'] is None
  off = bench.bench_spec(bench.parse_spec('wrn-10-1'), batch_sizes=(2,), modes=('infer',),
                         repeats=1, warmup=0, image_size=8, log=None)
  assert off[0]['pipelined_s'] is None and off[0]['pipelined_images_per_s'] is None


def test_host_cpu_names_the_model_and_its_numbers(tmp_path, monkeypatch):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n'
                     'model\t\t: 2\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\n'
                     'model name\t: other\n')
  real_open = open
  monkeypatch.setattr('builtins.open', lambda f, *a, **k: real_open(
      cpuinfo if f == '/proc/cpuinfo' else f, *a, **k))
  assert bench.host_cpu() == 'AMD EPYC (family 26, model 2)'
  assert bench.platform_name() == 'cpu, AMD EPYC (family 26, model 2)'
  monkeypatch.setattr('builtins.open', lambda *a, **k: (_ for _ in ()).throw(OSError('no')))
  monkeypatch.setattr('platform.processor', lambda: 'x86_64')
  assert bench.host_cpu() == 'x86_64'


def test_the_generic_fisher_step_is_timed_beside_the_train_step():
  """launch.bench's graph_fisher mode: jaxbud.graph's Fisher step on the same network (no gate
  in the model), reported against the train step like the hand-gated one."""
  rows = bench.bench_spec(bench.parse_spec('wrn-10-1'), batch_sizes=(2,), repeats=1, warmup=0,
                          image_size=8, modes=('train', 'graph_fisher'), peaks={}, log=None)
  train, generic = rows
  assert generic['mode'] == 'graph_fisher' and generic['params'] == train['params']
  assert generic['vs_train'] == pytest.approx(generic['median_s'] / train['median_s'])
  (line,) = bench.fisher_overheads(rows)
  assert line.startswith('Generic Fisher step (jaxbud.graph) vs train step, wrn-10-1 batch 2 ')
  assert 'graph_fisher' in bench.format_table(rows)
