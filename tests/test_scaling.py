"""The scaling table: one subprocess per forced CPU device count, the same global batch."""
import ml_collections
import pytest

from configs import bench_scaling
from jaxbud import scaling


def tiny(**overrides):
  c = bench_scaling.get_config().scaling
  c.update(dict(spec='wrn-10-1', batch_size=4, image_size=8, repeats=1, warmup=0), **overrides)
  return c


def test_each_device_count_runs_in_its_own_process_with_the_batch_split(tmp_path):
  rows = scaling.run(tiny(device_counts=(1, 2), out_dir=str(tmp_path)), log=None)
  assert [(r['device_count'], r['devices_used'], r['per_device_batch']) for r in rows] == [
      (1, 1, 4), (2, 2, 2)]
  assert all(r['mode'] == 'train' and r['batch_size'] == 4 and r['images_per_s'] > 0
             for r in rows)
  assert rows[0]['speedup_vs_first'] == 1.0
  assert sorted(p.name for p in tmp_path.iterdir()) == ['devices_1.json', 'devices_2.json']
  table = scaling.format_table(rows).splitlines()
  assert table[0].split()[:2] == ['devices', 'batch/dev'] and len(table) == 3


@pytest.mark.parametrize('overrides, message', [
    (dict(device_counts=(1, 4), batch_size=6), r'batch_size=6 must split evenly .* over \[4\]'),
    (dict(device_counts=(0,)), 'device_counts must be integers >= 1'),
    (dict(spec='nonet-3'), "unknown spec 'nonet-3'"),
])
def test_bad_settings_are_clear_errors_before_any_subprocess(overrides, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    scaling.run(tiny(out_dir=str(tmp_path / 'x'), **overrides), log=None)
  assert not (tmp_path / 'x').exists()
