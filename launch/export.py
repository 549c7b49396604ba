r"""Exports a trained network or pruned snapshot as StableHLO (jax.export) and ONNX.

  python -m launch.export --src=runs/prune/snapshots/563930 --out=/tmp/jaxbud/export \
      [--formats=stablehlo,onnx] [--overwrite] [--opset=17]

Writes model.stablehlo and/or model.onnx, spec.json and model.json into --out
(docs/export.md). StableHLO needs only the core install; ONNX needs `pip install -e .[export]`.
"""
from absl import flags

from jaxbud import cli
from jaxbud import export

_SRC = flags.DEFINE_string('src', None, 'A train workdir or a prune snapshot folder.',
                           required=True)
_OUT = flags.DEFINE_string('out', None, 'Folder for the exported files (new or empty).',
                           required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Write into --out even if it is not empty.')
_OPSET = flags.DEFINE_integer('opset', export.DEFAULT_OPSET, 'ONNX opset of model.onnx.')
_FORMATS = flags.DEFINE_list('formats', list(export.FORMATS),
                             'Artifacts to write: stablehlo, onnx (onnx needs the export extra).')


def main(argv):
  del argv
  result = export.export(_SRC.value, _OUT.value, _OVERWRITE.value, _OPSET.value,
                         _FORMATS.value)
  for name, path in result['files'].items():
    print(f'{path}  {result["bytes"][name]:,} bytes')
  names = {'stablehlo': 'StableHLO', 'onnx': f'ONNX (opset {result["opset"]})'}
  print(f'{result["params"]:,} params; ' + ', '.join(
      f'{names[f]} {s:.1f} s' for f, s in result['seconds'].items()))


if __name__ == '__main__':
  cli.run(main)
