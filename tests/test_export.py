"""launch.export: the StableHLO and ONNX files compute the jaxbud network's logits.

WRN, DenseNet-BC and ResNet, each with one prunable layer pruned to zero width, saved as real
checkpoints (jaxbud.checkpoint, as training saves them) with spec.json and model.json. The
StableHLO artifact runs in a separate Python with plain JAX (jaxbud never imported); the ONNX
model runs in onnxruntime. Both at batch sizes 1 and 3.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from configs import default
from jaxbud import checkpoint as ckpt_lib
from jaxbud import data as data_lib
from jaxbud import errors
from jaxbud import export
from jaxbud import inference
from jaxbud import models
from jaxbud import spec as spec_lib
from jaxbud import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = (1, 3)
# float32 logits of two runtimes: different kernels, summation orders and BN folding.
ONNX_TOLERANCE = 1e-4  # max |onnx - jaxbud| <= ONNX_TOLERANCE * max(1, max |jaxbud|)
SPECS = {
    'wrn': (spec_lib.wrn(10, 1).with_prunable((16, 0, 64)), 16),
    'densenet_bc': (spec_lib.densenet_bc(10, 4).with_prunable((16, 0, 16)), 16),
    'resnet': (spec_lib.ResNetSpec(18, ((8,), (0,), (16,), (16,), (16,), (16,), (32,), (32,)),
                                   stage_widths=(8, 16, 16, 32), stem=8), 32),
}


def make_run(workdir, spec, size, num_classes=10, seed=0):
  """A train workdir like launch.train's: checkpoints/, spec.json, model.json.

  The checkpoint holds a TrainState as training saves it, with random weights (kernels scaled
  by 1/sqrt(fan-in)) and BN statistics away from their initial values, so that normalisation and
  batch norm both change the logits. (Drawn with numpy: compiling the initialiser would take
  most of this module's time.)
  """
  model = models.build(spec, num_classes)
  tx = train.make_optimizer(default.get_config().train, steps_per_epoch=1)
  abstract = jax.eval_shape(functools.partial(train.create_state, model, tx,
                                              image_shape=(size, size, 3)), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(x.shape).astype(x.dtype)
    if 'opt_state' in name or name == '.step':
      return np.zeros(x.shape, x.dtype)
    if x.ndim > 1:  # conv and dense kernels
      return noise / np.sqrt(np.prod(x.shape[:-1]))
    if "'scale'" in name or "'var'" in name:
      return 1 + 0.2 * np.abs(noise)
    return 0.1 * noise  # BN bias and mean, dense bias

  state = jax.tree_util.tree_map_with_path(draw, abstract)
  os.makedirs(workdir)
  ckpts = ckpt_lib.Checkpoints(os.path.join(workdir, 'checkpoints'))
  ckpts.save(5, state, spec, {'epoch': 1})
  ckpts.wait()
  ckpts.close()
  spec_lib.save(spec, os.path.join(workdir, 'spec.json'))
  empty = np.zeros((0, size, size, 3), np.uint8)
  ds = data_lib.Dataset('synthetic', empty, np.zeros(0, np.int32), empty,
                        np.zeros(0, np.int32), num_classes, (125.3, 123.0, 113.9),
                        (63.0, 62.1, 66.7))
  inference.write_model_json(workdir, spec, ds, 'float32')
  return state


def images(batch, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


PLAIN_JAX = r'''
import sys, numpy as np, jax
for path in sys.argv[1:]:
  exported = jax.export.deserialize(open(path + '/model.stablehlo', 'rb').read())
  inputs = np.load(path + '/inputs.npz')
  np.savez(path + '/stablehlo_logits.npz',
           **{k: np.asarray(exported.call(inputs[k])) for k in inputs.files})
assert not any(m.startswith('jaxbud') for m in sys.modules), 'jaxbud was imported'
print('ok')
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """{family: (out folder, jaxbud logits per batch, network)}, artifacts run with plain JAX."""
  root = tmp_path_factory.mktemp('export')
  result = {}
  for family, (spec, size) in SPECS.items():
    assert 0 in spec.prunable
    src, out = str(root / family / 'run'), str(root / family / 'out')
    make_run(src, spec, size)
    export.export(src, out)
    net = inference.load(src)
    inputs = {f'b{b}': images(b, size, seed=b) for b in BATCHES}
    np.savez(os.path.join(out, 'inputs.npz'), **inputs)
    result[family] = (out, {k: net.predict(x) for k, x in inputs.items()}, net)
  r = subprocess.run([sys.executable, '-c', PLAIN_JAX, *(v[0] for v in result.values())],
                     cwd=str(root), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]
  return result


@pytest.mark.parametrize('family', SPECS)
def test_stablehlo_artifact_in_plain_jax_gives_the_jaxbud_logits(exported, family):
  out, logits, _ = exported[family]
  got = np.load(os.path.join(out, 'stablehlo_logits.npz'))
  for k, want in logits.items():
    assert got[k].shape == want.shape == (int(k[1:]), 10)
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family', SPECS)
def test_onnx_model_in_onnxruntime_gives_the_jaxbud_logits(exported, family):
  out, logits, _ = exported[family]
  session = ort.InferenceSession(os.path.join(out, 'model.onnx'),
                                 providers=['CPUExecutionProvider'])
  inputs = np.load(os.path.join(out, 'inputs.npz'))
  for k, want in logits.items():
    (got,) = session.run(['logits'], {'images': inputs[k]})
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= ONNX_TOLERANCE * max(1.0, np.max(np.abs(want)))


@pytest.mark.parametrize('family', SPECS)
def test_exported_files_describe_the_network(exported, family):
  out, _, net = exported[family]
  spec, size = SPECS[family]
  assert sorted(os.listdir(out)) == sorted(export.FILES + ('inputs.npz', 'stablehlo_logits.npz'))
  assert spec_lib.load(os.path.join(out, 'spec.json')) == spec == net.spec
  info = json.load(open(os.path.join(out, 'model.json')))
  assert info['input_shape'] == [size, size, 3] and info['num_classes'] == 10
  assert info['params'] == spec_lib.count_params(spec, 10) == net.num_params
  assert info['macs'] == spec_lib.count_macs(spec, size, 10)
  assert info['normalisation'] == {'mean': [125.3, 123.0, 113.9], 'std': [63.0, 62.1, 66.7]}
  model = onnx.load(os.path.join(out, 'model.onnx'))
  (inp,) = model.graph.input
  dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
  assert inp.name == 'images' and dims == ['batch', size, size, 3]
  assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert model.opset_import[0].version == export.DEFAULT_OPSET
  art = jax.export.deserialize(open(os.path.join(out, 'model.stablehlo'), 'rb').read())
  assert str(art.in_avals[0].shape[0]) == 'batch' and art.in_avals[0].dtype == jnp.uint8
  assert set(art.platforms) == set(export.PLATFORMS)


def launch(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'launch.export', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_launcher_writes_the_files_and_takes_an_opset(tmp_path):
  src, out = str(tmp_path / 'run'), tmp_path / 'out'
  make_run(src, *SPECS['wrn'])
  r = launch(f'--src={src}', f'--out={out}', '--opset=13')
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(out)) == sorted(export.FILES)
  assert onnx.load(str(out / 'model.onnx')).opset_import[0].version == 13
  assert 'model.onnx' in r.stdout and '63,962 params' in r.stdout


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  src = str(tmp_path_factory.mktemp('src') / 'run')
  make_run(src, *SPECS['wrn'])
  return src


@pytest.mark.parametrize('case, message', [
    ('no_checkpoint', r'no checkpoint in .*empty: expected checkpoints/'),
    ('not_empty', r'--out=.* exists and is not empty; .*--overwrite'),
    ('opset', r'--opset=7 is not supported; use an ONNX opset from 13 to \d+'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(small_run, tmp_path, case, message):
  src, out = small_run, tmp_path / 'out'
  flags = []
  if case == 'no_checkpoint':
    src = tmp_path / 'empty'
    src.mkdir()
  elif case == 'not_empty':
    out.mkdir()
    (out / 'notes.txt').write_text('keep')
  else:
    flags = ['--opset=7']
  r = launch(f'--src={src}', f'--out={out}', *flags)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr[-2000:]
  assert __import__('re').search(message, lines[0]), lines[0]
  if case == 'not_empty':
    assert os.listdir(out) == ['notes.txt'] and (out / 'notes.txt').read_text() == 'keep'
  else:
    assert not out.exists()


def test_overwrite_replaces_the_exported_files(small_run, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'model.onnx').write_text('old')
  with pytest.raises(export.errors.UsageError, match='exists and is not empty'):
    export.export(small_run, out)
  export.export(small_run, out, overwrite=True)
  assert sorted(os.listdir(out)) == sorted(export.FILES)
  assert onnx.load(str(out / 'model.onnx')).graph.input[0].name == 'images'


def test_a_primitive_without_lowering_is_an_error_naming_it():
  from jaxbud import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((2, 3), jnp.float32)
  with pytest.raises(NotImplementedError, match="primitive 'sin' has no ONNX lowering"):
    jaxpr_onnx.convert(lambda v: jnp.sin(v) + 1, [x])
  with pytest.raises(ValueError, match='opset 9 is not supported'):
    jaxpr_onnx.convert(lambda v: v + 1, [x], opset=9)


def test_onnx_routes_script_runs_the_chosen_route(tmp_path):
  out = tmp_path / 'routes.json'
  r = subprocess.run([sys.executable, 'scripts/onnx_routes.py', '--specs=wrn-10-1', '--size=8',
                      f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [row for row in json.loads(out.read_text()) if row['route'] == 'jaxpr_onnx']
  assert [row['spec'] for row in rows] == ['wrn-10-1', 'wrn-10-1-z0']
  assert all(row['ok'] and row['max_rel_err'] < 1e-4 and row['bytes'] > 0 for row in rows)


def test_stablehlo_alone_needs_no_onnx(tmp_path, monkeypatch):
  src, out = str(tmp_path / 'run'), tmp_path / 'out'
  make_run(src, *SPECS['wrn'])

  def no_onnx():
    raise errors.UsageError("ONNX export needs the onnx package: pip install -e '.[export]'")

  monkeypatch.setattr(export, '_converter', no_onnx)  # the core install: no onnx package
  with pytest.raises(errors.UsageError, match='needs the onnx package'):
    export.export(src, str(out))
  assert not out.exists()  # checked before anything is written
  result = export.export(src, str(out), formats=('stablehlo',))
  assert sorted(os.listdir(out)) == ['model.json', 'model.stablehlo', 'spec.json']
  assert set(result['seconds']) == {'stablehlo'} and result['opset'] is None
  with pytest.raises(errors.UsageError, match='--formats=tflite: expected one or more of '
                                              'stablehlo,onnx'):
    export.export(src, str(tmp_path / 'other'), formats=('tflite',))
