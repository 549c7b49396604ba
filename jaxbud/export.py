"""A trained or pruned network as files other programs run: StableHLO (jax.export) and ONNX.

`export(src, out)` reads a train workdir or prune snapshot (`jaxbud.inference.load`) and writes:
- model.stablehlo: the serialized `jax.export` artifact of the eval-mode forward pass, uint8
  NHWC images with a symbolic batch dimension in, float32 logits out, normalisation included,
  lowered for CPU, CUDA, ROCm and TPU. Plain JAX runs it:
  `jax.export.deserialize(open(path, 'rb').read()).call(images)`.
- model.onnx: the same function as an ONNX model (`jaxbud.jaxpr_onnx`), input 'images' with
  the dimension 'batch', output 'logits'. It always computes in float32 (a bfloat16 network's
  params are float32 already), since onnxruntime has no bfloat16 convolutions on CPU.
- spec.json and model.json of the network.
`formats` picks the artifacts (default both); StableHLO needs only the core install, ONNX the
`export` extra (onnx). Every check on the flags and the source runs before anything is written.
"""
import json
import os
import time

import jax
import jax.numpy as jnp

from jaxbud import errors
from jaxbud import inference
from jaxbud import models
from jaxbud import spec as spec_lib

FILES = ('model.stablehlo', 'model.onnx', 'spec.json', 'model.json')
FORMATS = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
DEFAULT_OPSET = 17
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def input_spec(net: inference.Network, batch: str = 'batch') -> jax.ShapeDtypeStruct:
  """uint8 (batch, H, W, C) with a symbolic batch dimension."""
  (b,) = jax.export.symbolic_shape(batch)
  return jax.ShapeDtypeStruct((b, *net.input_shape), jnp.uint8)


def stablehlo(net: inference.Network, platforms=PLATFORMS) -> bytes:
  """The serialized jax.export artifact of `net.apply` (weights embedded as constants)."""
  return serialize(net.apply, net.input_shape, platforms)


def serialize(fn, image_shape, platforms=PLATFORMS, batch: int | None = None) -> bytes:
  """The serialized jax.export artifact of `fn` on uint8 (batch, *image_shape) images, the
  batch symbolic unless `batch` is given: any network's forward pass, e.g. one `jaxbud.graph`
  compacted (a compacted program runs at the batch size it was analysed at: give it)."""
  if batch is None:
    (batch,) = jax.export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8)
  return bytes(jax.export.export(jax.jit(fn), platforms=platforms)(images).serialize())


def onnx_model(net: inference.Network, opset: int = DEFAULT_OPSET):
  """`net`'s forward pass, computed in float32, as an onnx.ModelProto."""
  model = net.model
  if jnp.dtype(model.dtype) != jnp.float32:
    model = models.build(net.spec, net.info['num_classes'], jnp.float32)
  fn = lambda images: inference.forward(  # pylint: disable=unnecessary-lambda-assignment
      model, net.variables, net.info['normalisation'], images)
  return _converter().convert(fn, [input_spec(net)], opset=opset, input_names=['images'],
                            output_names=['logits'], name=f'jaxbud_{net.spec.family}')


def _converter():
  """jaxbud.jaxpr_onnx, imported on use: it needs the onnx package (the export extra)."""
  try:
    from jaxbud import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UsageError("ONNX export needs the onnx package: pip install -e '.[export]'"
                            ) from None
  return jaxpr_onnx


def check(src, out, overwrite: bool = False, opset: int = DEFAULT_OPSET,
          formats=tuple(FORMATS)):
  """The checks `export` runs before writing: formats, opset, output folder, source
  (UsageError)."""
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise errors.UsageError(f'--formats={",".join(formats)}: expected one or more of '
                            f'{",".join(FORMATS)}')
  if 'onnx' in formats:
    lo, hi = _converter().MIN_OPSET, _converter().max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
      raise errors.UsageError(f'--opset={opset} is not supported; use an ONNX opset from {lo} '
                              f'to {hi} (default {DEFAULT_OPSET})')
  if not out:
    raise errors.UsageError('--out is empty; give the folder to write the exported files to')
  if os.path.exists(out):
    if not os.path.isdir(out):
      raise errors.UsageError(f'--out={out} is a file; give a folder')
    if os.listdir(out) and not overwrite:
      raise errors.UsageError(f'--out={out} exists and is not empty; choose a new folder or '
                              'pass --overwrite to replace the exported files in it')
  inference.checkpoint_dir(src)
  inference.read_model_json(src)


def export(src, out, overwrite: bool = False, opset: int = DEFAULT_OPSET,
           formats=tuple(FORMATS)) -> dict:
  """Writes the `formats` artifacts, spec.json and model.json for the network in `src` into
  `out`; returns paths, sizes and seconds per format."""
  src, out, formats = os.fspath(src), os.fspath(out), tuple(formats)
  check(src, out, overwrite, opset, formats)
  net = inference.load(src)
  contents, seconds = {}, {}
  make = {'stablehlo': lambda: stablehlo(net),
          'onnx': lambda: onnx_model(net, opset).SerializeToString()}
  for f in formats:
    t0 = time.perf_counter()
    contents[FORMATS[f]] = make[f]()
    seconds[f] = time.perf_counter() - t0
  contents.update({'spec.json': (spec_lib.to_json(net.spec) + '\n').encode(),
                   'model.json': json.dumps(net.info, indent=1).encode()})
  os.makedirs(out, exist_ok=True)
  for name, data in contents.items():
    with open(os.path.join(out, name), 'wb') as f:
      f.write(data)
  return {'files': {n: os.path.join(out, n) for n in contents},
          'bytes': {n: len(data) for n, data in contents.items()},
          'seconds': seconds, 'params': net.num_params,
          'opset': opset if 'onnx' in formats else None}
