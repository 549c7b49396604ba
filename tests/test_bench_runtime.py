"""bench.runtime=onnxruntime: XLA and onnxruntime rows for one tiny WRN, order, settings."""
import subprocess
import sys

import pytest

from configs import bench as bench_config
from jaxbud import bench
from jaxbud import bench_runtime
from jaxbud import errors
from tests.test_bench import ROOT


def small_config(**overrides):
  c = bench_config.get_config()
  c.bench.update(dict(runtime='onnxruntime', specs=('wrn-10-1',), batch_sizes=(1, 2),
                      image_size=8, repeats=2, warmup=1), **overrides)
  return c.bench


@pytest.fixture(scope='module')
def timed():
  """(rows, the runtime of every call in order) of one small run."""
  calls = []
  with pytest.MonkeyPatch.context() as mp:
    for cls, name in ((bench._Case, 'xla'), (bench_runtime._OrtCase, 'ort')):  # pylint: disable=protected-access
      mp.setattr(cls, 'call', lambda case, o=cls.call, n=name: calls.append(n) or o(case))
    return bench_runtime.run(small_config(), log=None), calls


@pytest.fixture(scope='module')
def rows(timed):
  return timed[0]


def test_rows_time_both_runtimes_at_every_batch(rows):
  assert [(r['runtime'], r['batch_size']) for r in rows] == [
      ('xla', 1), ('onnxruntime', 1), ('xla', 2), ('onnxruntime', 2)]
  for r in rows:
    assert r['spec'] == 'wrn-10-1' and r['params'] == 77_850 and r['image_size'] == 8
    assert 0 < r['min_s'] <= r['median_s'] <= r['max_s'] and r['repeats'] == 2
    assert r['max_abs_logit_diff'] < 1e-4  # both runtimes compute the same logits
    assert r['ort_provider'] == 'CPUExecutionProvider' and r['device_kind'] and r['cpu']
  for xla, ort in zip(rows[::2], rows[1::2]):
    assert xla['vs_xla'] == 1.0 and ort['vs_xla'] == pytest.approx(
        ort['median_s'] / xla['median_s'])
  table = bench_runtime.format_table(rows)
  assert len(table.splitlines()) == 5 and 'onnxruntime' in table and 'vs_xla' in table


def test_runtimes_are_timed_interleaved(timed):
  _, calls = timed
  # Per batch size: 1 warm-up round, then 2 rounds, each timed call primed, the order rotated.
  per_batch = ['xla', 'ort'] + ['xla', 'xla', 'ort', 'ort'] + ['ort', 'ort', 'xla', 'xla']
  assert calls == per_batch * 2


@pytest.mark.parametrize('field, value, message', [
    ('runtime', 'tflite', r"unknown bench.runtime 'tflite'"),
    ('dtypes', ('bfloat16',), r'times float32 networks'),
    ('batch_sizes', (0,), r'batch_sizes entries must be integers >= 1'),
    ('specs', ('nope-1',), r"unknown spec 'nope-1'"),
])
def test_bad_settings_raise_before_anything_runs(field, value, message):
  with pytest.raises(ValueError, match=message):
    bench_runtime.run(small_config(**{field: value}), log=None)
  assert issubclass(errors.UsageError, ValueError)


def test_launcher_unknown_runtime_is_one_line_exit_2(tmp_path):
  r = subprocess.run([sys.executable, '-m', 'launch.bench', '--config=configs/bench.py',
                      '--config.bench.runtime=tflite', f'--config.bench.out_dir={tmp_path}/out'],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: unknown bench.runtime 'tflite'"), lines
  assert not (tmp_path / 'out').exists()
