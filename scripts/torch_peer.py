r"""The PyTorch peer: jaxbud's WRN and DenseNet-BC specs built in PyTorch and timed the same way.

What a user would run instead of jaxbud, on the same machine in the same run:
  eager_f32        eager PyTorch, float32, NCHW (cuDNN picks its algorithms: benchmark mode);
  bf16_cl          autocast bfloat16 with channels_last tensors;
  compile_bf16_cl  torch.compile of the bf16_cl model (default mode; the first call compiles).

  python scripts/torch_peer.py --spec wrn-40-2 --batch 128
  python scripts/torch_peer.py --spec densenet_bc-100-12 --batch 64 --modes bf16_cl --ops train

The networks are built from jaxbud's width specs (jaxbud.spec), so they are the same networks;
the parameter count is checked against spec.count_params. Ops: `train` is one SGD step (momentum
0.9, weight decay 5e-4) from a uint8 NHWC batch on the device, normalised inside the step as
jaxbud's step does (jaxbud's step also crops and flips; this one does not); `infer` is the eval
forward pass in inference mode. Each (mode, op) prints one JSON line as soon as it is timed, and
appends it to --out: `synced_s`, the median of --repeats calls each followed by a device sync,
`pipelined_s`, the median per-call time of --steps calls back to back with one sync (as a
training loop runs), and `first_call_s` (for compile_bf16_cl, the compilation).
"""
import argparse
import json
import os
import re
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # jaxbud.spec
from jaxbud import spec as spec_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = ('eager_f32', 'bf16_cl', 'compile_bf16_cl')
OPS = ('train', 'infer')


def parse_spec(text: str):
  """'wrn-D-K', 'densenet_bc-D-K', or inline spec JSON -> a jaxbud spec."""
  m = re.fullmatch(r'wrn-(\d+)-(\d+(?:\.\d+)?)', text)
  if m:
    return spec_lib.wrn(int(m[1]), float(m[2]))
  m = re.fullmatch(r'densenet(?:_bc|-bc)?-(\d+)-(\d+)', text)
  if m:
    return spec_lib.densenet_bc(int(m[1]), int(m[2]))
  if text.lstrip().startswith('{'):
    return spec_lib.from_json(text)
  raise SystemExit(f"error: unknown spec {text!r}; expected wrn-D-K, densenet_bc-D-K or JSON")


def _conv(cin, cout, k, stride=1):
  if cin < 1 or cout < 1:
    raise SystemExit('error: the torch peer builds no zero-width layers (pruned-away paths)')
  conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  return conv


class WRNBlock(nn.Module):
  """Pre-activation block, as jaxbud.models.WRNBlock: the shortcut takes relu(bn1(x))."""

  def __init__(self, cin, inner, cout, stride):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv(cin, inner, 3, stride)
    self.bn2, self.conv2 = nn.BatchNorm2d(inner), _conv(inner, cout, 3)
    self.shortcut = _conv(cin, cout, 1, stride) if cin != cout or stride != 1 else None

  def forward(self, x):
    o = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(o))))
    return (x if self.shortcut is None else self.shortcut(o)) + y


class DenseLayer(nn.Module):
  def __init__(self, cin, bottleneck, growth):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv(cin, bottleneck, 1)
    self.bn2, self.conv2 = nn.BatchNorm2d(bottleneck), _conv(bottleneck, growth, 3)

  def forward(self, x):
    y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
    return torch.cat([x, y], 1)


class Transition(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.bn, self.conv = nn.BatchNorm2d(cin), _conv(cin, cout, 1)

  def forward(self, x):
    return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class Net(nn.Module):
  """stem conv -> body -> BN, ReLU, global mean -> linear head (jaxbud.models' layout)."""

  def __init__(self, spec, num_classes=10):
    super().__init__()
    if spec.family == 'wrn':
      self.stem = _conv(spec.in_channels, spec.stem, 3)
      body = [WRNBlock(cin, inner, cout, stride) for _, cin, inner, cout, stride in spec.blocks()]
      width = spec.stage_widths[-1]
    elif spec.family == 'densenet_bc':
      self.stem = _conv(spec.in_channels, spec.stem, 3)
      body = [DenseLayer(*rest) if kind == 'layer' else Transition(*rest)
              for kind, _, *rest in spec.layers()]
      width = spec.out_width
    else:
      raise SystemExit(f'error: the torch peer has no {spec.family} network')
    self.body, self.bn = nn.Sequential(*body), nn.BatchNorm2d(width)
    self.head = nn.Linear(width, num_classes)
    nn.init.zeros_(self.head.bias)

  def forward(self, x):
    return self.head(F.relu(self.bn(self.body(self.stem(x)))).mean((2, 3)))


def count_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


class Peer:
  """One mode's model, optimizer and step functions on one device."""

  def __init__(self, spec, mode, batch, image_size, num_classes, device):
    self.mode, self.device = mode, device
    self.bf16, self.cl = mode != 'eager_f32', mode != 'eager_f32'
    torch.manual_seed(0)
    model = Net(spec, num_classes).to(device)
    if self.cl:
      model = model.to(memory_format=torch.channels_last)
    self.params = count_params(model)
    self.model = torch.compile(model) if mode == 'compile_bf16_cl' else model
    self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    shape = (batch, image_size, image_size, spec.in_channels)
    self.images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(device)
    self.labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    self.mean, self.std = 127.5, 73.9

  def _inputs(self):
    x = self.images.permute(0, 3, 1, 2).float()  # NHWC memory: already channels_last
    x = (x - self.mean) / self.std
    return x if self.cl else x.contiguous()

  def _autocast(self):
    return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

  def train(self):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    with self._autocast():
      loss = F.cross_entropy(self.model(self._inputs()).float(), self.labels)
    loss.backward()
    self.opt.step()
    return loss

  def infer(self):
    self.model.eval()
    with torch.inference_mode(), self._autocast():
      return self.model(self._inputs())


def _sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def time_op(fn, device, repeats, steps, warmup):
  """first_call_s, synced_s (median of per-call synced times), pipelined_s (per call)."""
  t = time.perf_counter()
  fn()
  _sync(device)
  first = time.perf_counter() - t
  for _ in range(warmup):
    fn()
  _sync(device)
  synced = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    _sync(device)
    synced.append(time.perf_counter() - t)
  pipelined = []
  for _ in range(3):
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
      fn()
    _sync(device)
    pipelined.append((time.perf_counter() - t) / steps)
  return first, statistics.median(synced), statistics.median(pipelined)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--spec', default='wrn-40-2')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--size', type=int, default=32, help='image side')
  p.add_argument('--classes', type=int, default=10)
  p.add_argument('--modes', default=','.join(MODES))
  p.add_argument('--ops', default=','.join(OPS))
  p.add_argument('--repeats', type=int, default=10, help='synced calls timed')
  p.add_argument('--steps', type=int, default=50, help='pipelined calls per run (3 runs)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--label', default='', help='the spec name in the output (default --spec)')
  p.add_argument('--out', default='', help='also append the JSON lines to this file')
  a = p.parse_args(argv)
  modes, ops = a.modes.split(','), a.ops.split(',')
  for m in modes:
    if m not in MODES:
      raise SystemExit(f'error: unknown mode {m!r}; expected some of {MODES}')
  for o in ops:
    if o not in OPS:
      raise SystemExit(f'error: unknown op {o!r}; expected some of {OPS}')
  spec = parse_spec(a.spec)
  expected = spec_lib.count_params(spec, a.classes)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cudnn.benchmark = True
  for mode in modes:
    peer = Peer(spec, mode, a.batch, a.size, a.classes, device)
    if peer.params != expected:  # both sides must time the same network
      raise SystemExit(f'error: torch built {peer.params:,} parameters, jaxbud counts '
                       f'{expected:,} for {a.spec}')
    for op in ops:
      first, synced, pipelined = time_op(getattr(peer, op), device, a.repeats, a.steps,
                                         a.warmup)
      row = {'framework': 'torch', 'torch_version': torch.__version__, 'mode': mode, 'op': op,
             'spec': a.label or a.spec, 'params': peer.params, 'batch_size': a.batch,
             'image_size': a.size, 'dtype': 'bfloat16' if peer.bf16 else 'float32',
             'channels_last': peer.cl, 'first_call_s': first, 'synced_s': synced,
             'pipelined_s': pipelined, 'pipelined_steps': a.steps, 'repeats': a.repeats,
             'images_per_s': a.batch / pipelined, 'device': str(device),
             'device_name': (torch.cuda.get_device_name(device) if device.type == 'cuda'
                             else 'cpu'),
             'threads': torch.get_num_threads(),
             'cudnn_tf32': torch.backends.cudnn.allow_tf32,
             'matmul_tf32': torch.backends.cuda.matmul.allow_tf32}
      line = json.dumps(row)
      print(line, flush=True)
      if a.out:
        with open(a.out, 'a') as f:
          f.write(line + '\n')
    del peer


if __name__ == '__main__':
  main()
