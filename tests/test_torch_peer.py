"""scripts/torch_peer.py: the PyTorch peer builds jaxbud's networks (needs torch; skipped without)."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip('torch')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import torch_peer  # pylint: disable=wrong-import-position

from jaxbud import spec as spec_lib  # pylint: disable=wrong-import-position


@pytest.mark.parametrize('spec', [spec_lib.wrn(40, 2), spec_lib.densenet_bc(100, 12),
                                  spec_lib.wrn(16, 1).with_prunable((3, 16, 5, 32, 7, 64))])
def test_parameter_counts_match_jaxbud(spec):
  assert torch_peer.count_params(torch_peer.Net(spec)) == spec_lib.count_params(spec)


def test_counts_of_the_paper_networks():
  assert torch_peer.count_params(torch_peer.Net(torch_peer.parse_spec('wrn-40-2'))) == 2_243_546
  assert torch_peer.count_params(
      torch_peer.Net(torch_peer.parse_spec('densenet_bc-100-12'))) == 769_162


def test_eager_modes_write_one_json_line_each(tmp_path):
  """In a process of its own, as launch.bench_compare runs it: torch's kernels and threads in a
  test process that also holds JAX's and other libraries' have crashed it (a segfault in a
  pytest worker)."""
  out = tmp_path / 'peer.jsonl'
  r = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'torch_peer.py'),
                      '--spec', 'wrn-10-1', '--batch', '2', '--size', '8', '--modes',
                      'eager_f32,bf16_cl', '--repeats', '1', '--steps', '1', '--warmup', '0',
                      '--out', str(out)], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [(r['mode'], r['op']) for r in rows] == [
      ('eager_f32', 'train'), ('eager_f32', 'infer'), ('bf16_cl', 'train'), ('bf16_cl', 'infer')]
  assert all(r['params'] == 77_850 and r['pipelined_s'] > 0 and r['synced_s'] > 0 for r in rows)
  assert rows[2]['dtype'] == 'bfloat16' and rows[2]['channels_last']
  with pytest.raises(SystemExit, match="unknown mode 'fp8'"):
    torch_peer.main(['--modes', 'fp8'])


def test_bench_compare_runs_the_project_peer():
  """launch.bench_compare's torch side: the peer in a subprocess, on a pruned (non-uniform)
  spec, with the parameter count both sides must agree on."""
  from jaxbud import bench  # pylint: disable=g-import-not-at-top
  spec = spec_lib.wrn(10, 1).with_prunable((5, 30, 60))
  t = bench.run_torch_reference(bench.PEER_SCRIPT, spec, batch_size=2, repeats=2,
                                image_size=8)
  assert t['params'] == spec_lib.count_params(spec)
  assert t['train_step_s'] > 0 and t['infer_s'] > 0 and t['framework'] == 'torch'
  assert [(r['mode'], r['op']) for r in t['rows']] == [('eager_f32', 'train'),
                                                        ('eager_f32', 'infer')]
  with pytest.raises(ValueError, match='the torch peer has no resnet model'):
    bench.run_torch_reference(bench.PEER_SCRIPT, spec_lib.resnet(50), 2, 2)
