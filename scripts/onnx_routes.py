r"""Ways to turn a jaxbud network into ONNX, tried side by side: works?, time, size, error.

  python scripts/onnx_routes.py [--specs=wrn-40-2,densenet_bc-100-12,resnet-18] [--size=0]

Routes (each one tried only if its package imports):
- jaxpr_onnx:      jaxbud.jaxpr_onnx, the lowering launch.export uses (needs onnx).
- jax2onnx:        jax2onnx.to_onnx on the same function (pip install jax2onnx).
- jax2tf+tf2onnx:  jax.experimental.jax2tf to a tf.function, then tf2onnx.convert.from_function
                   (pip install tf2onnx; TensorFlow comes with the test extra).
Every spec also gets a variant with its first prunable layer at zero width ('<spec>-z0'). The
function is the one launch.export converts (jaxbud.inference.forward: uint8 NHWC images,
normalisation, eval-mode forward, float32 logits) with a symbolic batch dimension, weights from
the initialiser with BN statistics moved off their initial values. For each route: conversion
seconds, ONNX bytes, and max |onnxruntime - XLA| / max |XLA| over batches of 1 and 3. JSON of
every row goes to --out.
"""
import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import onnxruntime as ort  # pylint: disable=wrong-import-position

from jaxbud import bench  # pylint: disable=wrong-import-position
from jaxbud import export  # pylint: disable=wrong-import-position
from jaxbud import jaxpr_onnx  # pylint: disable=wrong-import-position
from jaxbud import spec as spec_lib  # pylint: disable=wrong-import-position
from jaxbud import bench_runtime  # pylint: disable=wrong-import-position


def _jaxpr_onnx(fn, shape, opset):
  (b,) = jax.export.symbolic_shape('batch')
  return jaxpr_onnx.convert(fn, [jax.ShapeDtypeStruct((b, *shape), jnp.uint8)], opset=opset)


def _jax2onnx(fn, shape, opset):
  import jax2onnx  # pylint: disable=g-import-not-at-top
  return jax2onnx.to_onnx(fn, inputs=[jax.ShapeDtypeStruct(('B', *shape), jnp.uint8)],
                          opset=opset)


def _tf2onnx(fn, shape, opset):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf2onnx  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  poly = '(b, ' + ', '.join(map(str, shape)) + ')'
  f = tf.function(jax2tf.convert(fn, polymorphic_shapes=[poly], with_gradient=False),
                  autograph=False)
  ops = {op.type for op in f.get_concrete_function(
      tf.TensorSpec((None, *shape), tf.uint8)).graph.get_operations()}
  if 'XlaCallModule' in ops:  # tf2onnx has no handler for it and fails with a vaguer message
    raise NotImplementedError('jax2tf wrapped the function in one XlaCallModule op (serialized '
                              'StableHLO, its only mode in this JAX), which tf2onnx cannot convert')
  model, _ = tf2onnx.convert.from_function(
      f, input_signature=[tf.TensorSpec((None, *shape), tf.uint8)], opset=opset)
  return model


ROUTES = {'jaxpr_onnx': (_jaxpr_onnx, 'onnx'), 'jax2onnx': (_jax2onnx, 'jax2onnx'),
          'jax2tf+tf2onnx': (_tf2onnx, 'tf2onnx')}


def _available(module):
  try:
    __import__(module)
    return True
  except ImportError:
    return False


def _moved_stats(net):
  """BN statistics away from (0, 1), so that a wrong folding shows in the logits."""
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda x: np.asarray(x) * 0.5 + 0.2 * np.abs(
      rng.standard_normal(x.shape)).astype(np.float32), net.variables['batch_stats'])
  net.variables = {'params': net.variables['params'], 'batch_stats': stats}
  return net


def try_route(route, net, opset):
  convert, _ = ROUTES[route]
  fn = lambda x: net.apply(x)  # pylint: disable=unnecessary-lambda,unnecessary-lambda-assignment
  row = {'route': route}
  try:
    t = time.perf_counter()
    model = convert(fn, net.input_shape, opset)
    row['convert_s'] = time.perf_counter() - t
    data = model.SerializeToString()
    row['bytes'] = len(data)
    session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    errs = []
    for b in (1, 3):
      x = bench.synthetic_batch(b, net.input_shape, 10, seed=b)['image']
      want = np.asarray(jax.jit(fn)(x))
      got = session.run(None, {session.get_inputs()[0].name: x})[0]
      errs.append(float(np.max(np.abs(got - want)) / max(1e-12, np.max(np.abs(want)))))
    row.update(ok=True, max_rel_err=max(errs))
  except Exception as e:  # pylint: disable=broad-except  # a failed route is a result here
    last = traceback.extract_tb(e.__traceback__)[-1]
    row.update(ok=False, error=f'{type(e).__name__}: {" ".join(str(e).split())[:160]} '
                               f'({os.path.basename(last.filename)}:{last.lineno})')
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--specs', default='wrn-40-2,densenet_bc-100-12,resnet-18')
  p.add_argument('--size', type=int, default=0, help='image size (0: 32, resnet 64)')
  p.add_argument('--opset', type=int, default=export.DEFAULT_OPSET)
  p.add_argument('--out', default='/tmp/jaxbud/onnx_routes.json')
  args = p.parse_args()
  routes = [r for r, (_, module) in ROUTES.items() if _available(module)]
  print(f'routes available: {routes}; jax {jax.__version__}, onnxruntime {ort.__version__}, '
        f'opset {args.opset}, {bench.host_cpu()}')
  rows = []
  for text in args.specs.split(','):
    named = bench.parse_spec(text)
    size = args.size or (64 if named.spec.family == 'resnet' else 32)
    zero = named.spec.with_prunable((0,) + named.spec.prunable[1:])
    for label, spec in ((named.label, named.spec), (f'{named.label}-z0', zero)):
      net = _moved_stats(bench_runtime._network(spec, size, 10))  # pylint: disable=protected-access
      for route in routes:
        row = {'spec': label, 'params': spec_lib.count_params(spec, 10), 'image_size': size,
               **try_route(route, net, args.opset)}
        rows.append(row)
        print(f'{label:<24} {route:<15} ' + (
            f'ok  {row["convert_s"]:6.1f} s {row["bytes"] / 1e6:7.2f} MB  max rel err '
            f'{row["max_rel_err"]:.1e}' if row['ok'] else f'FAILED {row["error"]}'), flush=True)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(rows, f, indent=1)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
