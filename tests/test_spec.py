"""Width specs: reference counts, pruning arithmetic, serialisation and validation."""
import json

import pytest

from jaxbud import spec as S


# ----------------------------------------------------------------------------- reference counts

def test_wrn_40_2_reference_counts():
  s = S.wrn(40, 2)
  assert s.stage_widths == (32, 64, 128)
  assert len(s.inner) == 18 and len(list(s.blocks())) == 18
  assert S.count_params(s) == 2_243_546
  assert sum(s.prunable) == 1_344
  assert abs(S.count_macs(s, 32) - 328e6) / 328e6 < 0.01


def test_densenet_bc_100_reference_counts():
  s = S.densenet_bc(100, 12)
  assert s.layers_per_block == 16
  assert s.prunable == (48,) * 48
  assert sum(s.prunable) == 2_304
  assert S.count_params(s) == 769_162
  assert abs(S.count_macs(s, 32) - 288e6) / 288e6 < 0.01


@pytest.mark.parametrize('depth, params, gmacs', [
    (18, 11_689_512, 1.814), (34, 21_797_672, 3.664), (50, 25_557_032, 4.089)])
def test_resnet_torchvision_counts(depth, params, gmacs):
  s = S.resnet(depth)
  assert S.count_params(s, num_classes=1000) == params
  assert abs(S.count_macs(s, 224, 1000) / 1e9 - gmacs) < 0.005


def test_resnet_prunable_layout():
  r18, r50 = S.resnet(18), S.resnet(50)
  assert r18.kind == 'basic' and r50.kind == 'bottleneck'
  assert len(r18.prunable) == 8 and len(r50.prunable) == 32
  assert r18.prunable_names[:2] == ('block0/conv1', 'block1/conv1')
  assert r50.prunable_names[:3] == ('block0/conv1', 'block0/conv2', 'block1/conv1')


def test_prunable_names_are_unique_and_match_widths():
  for s in (S.wrn(40, 2), S.densenet_bc(100, 12), S.resnet(18), S.resnet(50)):
    assert len(s.prunable_names) == len(s.prunable) == len(set(s.prunable_names))
  assert S.wrn(10, 1).prunable_names == ('block0/conv1', 'block1/conv1', 'block2/conv1')
  assert S.densenet_bc(10, 4).prunable_names == (
      'dense0_layer0/conv1', 'dense1_layer0/conv1', 'dense2_layer0/conv1')


# ----------------------------------------------------------------------------- pruning arithmetic

def _minus_one(s, i):
  widths = list(s.prunable)
  widths[i] -= 1
  return s.with_prunable(widths)


def test_one_wrn_inner_channel_costs_9in_9out_2():
  s = S.wrn(40, 2)
  full, full_macs = S.count_params(s), S.count_macs(s, 32)
  h = 32
  for i, (name, cin, _, cout, stride) in enumerate(s.blocks()):
    h = (h - 1) // stride + 1
    pruned = _minus_one(s, i)
    assert full - S.count_params(pruned) == 9 * cin + 9 * cout + 2, name
    assert full_macs - S.count_macs(pruned, 32) == h * h * 9 * (cin + cout), name


def test_one_densenet_bottleneck_channel_costs_in_9k_2():
  s = S.densenet_bc(40, 12)
  full = S.count_params(s)
  layers = [(name, cin, k) for kind, name, cin, *rest in s.layers() if kind == 'layer'
            for k in rest[1:]]
  assert [n for n, _, _ in layers] == [n.split('/')[0] for n in s.prunable_names]
  for i, (name, cin, k) in enumerate(layers):
    assert full - S.count_params(_minus_one(s, i)) == cin + 9 * k + 2, name


def test_one_resnet_channel_costs():
  basic = S.resnet(18)
  for i, (name, cin, (mid,), cout, _) in enumerate(basic.blocks()):
    assert S.count_params(basic) - S.count_params(_minus_one(basic, i)) == 9 * (cin + cout) + 2
  bottle = S.resnet(50)
  full = S.count_params(bottle)
  for b, (name, cin, (m1, m2), cout, _) in enumerate(bottle.blocks()):
    assert full - S.count_params(_minus_one(bottle, 2 * b)) == cin + 9 * m2 + 2, name
    assert full - S.count_params(_minus_one(bottle, 2 * b + 1)) == 9 * m1 + cout + 2, name


def test_zero_width_block_drops_its_whole_main_path():
  s = S.wrn(10, 1)
  name, cin, mid, cout, _ = list(s.blocks())[1]  # 16 -> 32, stride 2: keeps its shortcut
  main = 9 * cin * mid + 2 * mid + 9 * mid * cout
  assert S.count_params(s) - S.count_params(s.with_prunable((16, 0, 64))) == main
  # Everything pruned: stem, bn1s, shortcuts and head remain.
  zero = s.with_prunable((0, 0, 0))
  assert S.count_params(zero) == (27 * 16 + 2 * 16 + 2 * 16 + 16 * 32 + 2 * 32 + 32 * 64
                                  + 2 * 64 + 64 * 10 + 10)


def test_scale_prunable():
  s = S.wrn(16, 2).with_prunable((32, 0, 64, 64, 128, 3))
  half = S.scale_prunable(s, 0.5)
  assert half.prunable == (16, 0, 32, 32, 64, 2)
  assert S.scale_prunable(s, 0.01).prunable == (1, 0, 1, 1, 1, 1)
  assert S.scale_prunable(s, 0.01, minimum=2).prunable == (2, 0, 2, 2, 2, 2)
  assert half.stage_widths == s.stage_widths
  r = S.scale_prunable(S.resnet(50), 0.25)
  assert r.inner[0] == (16, 16) and r.inner[-1] == (128, 128)


# ----------------------------------------------------------------------------- constructors

def test_fractional_widen():
  s = S.wrn(16, 1.5)
  assert s.stage_widths == (24, 48, 96)
  assert s.inner == (24, 24, 48, 48, 96, 96)
  assert S.wrn(10, 0.5).stage_widths == (8, 16, 32)
  assert S.wrn(10, 0.75).stage_widths == (12, 24, 48)


def test_inner_width_zero_is_valid():
  s = S.WRNSpec(10, (16, 32, 64), (0, 0, 0))
  assert s.prunable == (0, 0, 0)
  assert S.densenet_bc(10, 4).with_prunable((0, 16, 0)).bottleneck == (0, 16, 0)
  assert S.resnet(50).with_prunable([0] * 32).inner[3] == (0, 0)


def test_with_prunable_returns_new_spec():
  s = S.wrn(10, 1)
  t = s.with_prunable([3, 2, 1])
  assert t.inner == (3, 2, 1) and s.inner == (16, 32, 64)
  assert t.stage_widths == s.stage_widths and t.depth == s.depth
  with pytest.raises(Exception):  # frozen
    s.inner = (1, 1, 1)


# ----------------------------------------------------------------------------- serialisation

def _specs():
  return [
      S.wrn(40, 2),
      S.wrn(16, 1.5, in_channels=1),
      S.wrn(10, 1).with_prunable((0, 7, 0)),
      S.densenet_bc(100, 12),
      S.densenet_bc(16, 4).with_prunable((0, 3, 16, 0, 1, 16)),
      S.resnet(18),
      S.resnet(50),
      S.resnet(50).with_prunable([0] * 31 + [5]),
  ]


@pytest.mark.parametrize('spec', _specs(), ids=lambda s: f'{s.family}-{s.depth}')
def test_json_round_trip(spec, tmp_path):
  text = S.to_json(spec)
  assert spec.to_json() == text
  json.loads(text)  # valid JSON
  back = S.from_json(text)
  assert back == spec and hash(back) == hash(spec) and type(back) is type(spec)
  assert S.to_json(back) == text
  assert S.from_dict(S.to_dict(spec)) == spec
  assert S.to_dict(spec)['family'] == spec.family
  path = tmp_path / 'spec.json'
  S.save(spec, path)
  loaded = S.load(path)
  assert loaded == spec and hash(loaded) == hash(spec)
  assert S.count_params(loaded) == S.count_params(spec)


def test_specs_are_hashable_dict_keys():
  table = {s: i for i, s in enumerate(_specs())}
  assert len(table) == len(_specs())
  for i, s in enumerate(_specs()):
    assert table[S.from_json(S.to_json(s))] == i
  assert S.wrn(10, 1) == S.wrn(10, 1) and S.wrn(10, 1) != S.wrn(10, 2)
  assert S.wrn(10, 1) != S.wrn(10, 1).with_prunable((16, 32, 63))
  assert len({S.wrn(10, 1), S.wrn(10, 1), S.wrn(10, 1).with_prunable((16, 32, 64))}) == 1


def test_resnet_json_uses_nested_lists():
  d = S.to_dict(S.resnet(50))
  assert d['inner'][0] == [64, 64]
  assert isinstance(S.from_dict(json.loads(json.dumps(d))).inner[0], tuple)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize('depth', [12, 9, 41, 30])
def test_wrn_depth_must_be_6n_plus_4(depth):
  with pytest.raises(ValueError, match=r'WRN depth must be 6n\+4 \(10, 16, 22.*got ' + str(depth)):
    S.wrn(depth, 1)


def test_wrn_spec_depth_checked_in_constructor():
  with pytest.raises(ValueError, match=r'WRN depth must be 6n\+4 .*got 12'):
    S.WRNSpec(12, (16, 32, 64), (16, 32, 64))
  with pytest.raises(ValueError, match=r'depth must be an integer >= 10, got 4'):
    S.WRNSpec(4, (16, 32, 64), ())
  with pytest.raises(ValueError, match=r'depth must be an integer >= 10, got 10\.0'):
    S.WRNSpec(10.0, (16, 32, 64), (16, 32, 64))


@pytest.mark.parametrize('depth', [99, 98, 12])
def test_densenet_depth_must_be_6n_plus_4(depth):
  with pytest.raises(ValueError, match=r'DenseNet-BC depth must be 6n\+4 .*got ' + str(depth)):
    S.densenet_bc(depth, 12)
  with pytest.raises(ValueError, match=r'DenseNet-BC depth must be 6n\+4'):
    S.DenseNetSpec(depth, 12, (48,) * 3)


@pytest.mark.parametrize('widen', [0, -1, -0.5])
def test_widen_must_be_positive(widen):
  with pytest.raises(ValueError, match=r'widen must be > 0, got ' + str(widen)):
    S.wrn(16, widen)


def test_widen_too_small_for_a_stage():
  with pytest.raises(ValueError,
                     match=r'widen=0\.01 gives a stage width of 0; use widen >= 0\.0625'):
    S.wrn(16, 0.01)


@pytest.mark.parametrize('widths, msg', [
    ((16, 0, 64), r'stage_widths\[1\] must be an integer >= 1, got 0'),
    ((16, 32, -4), r'stage_widths\[2\] must be an integer >= 1, got -4'),
    ((16, 32), r'stage_widths must have 3 entries for this depth, got 2'),
    ([16, 32, 64], r'stage_widths must be a tuple of integers, got list'),
])
def test_bad_stage_widths(widths, msg):
  with pytest.raises(ValueError, match=msg):
    S.WRNSpec(10, widths, (16, 32, 64))


@pytest.mark.parametrize('inner, msg', [
    ((16, -1, 64), r'inner\[1\] must be an integer >= 0, got -1'),
    ((16, 32), r'inner must have 3 entries for this depth, got 2'),
    ((16, 32, 64, 64), r'inner must have 3 entries for this depth, got 4'),
    ((16, 32.0, 64), r'inner\[1\] must be an integer >= 0, got 32\.0'),
    ((16, True, 64), r'inner\[1\] must be an integer >= 0, got True'),
])
def test_bad_wrn_inner(inner, msg):
  with pytest.raises(ValueError, match=msg):
    S.WRNSpec(10, (16, 32, 64), inner)


def test_bad_densenet_fields():
  with pytest.raises(ValueError, match=r'bottleneck must have 3 entries for this depth, got 4'):
    S.DenseNetSpec(10, 4, (16,) * 4)
  with pytest.raises(ValueError, match=r'bottleneck\[0\] must be an integer >= 0, got -1'):
    S.DenseNetSpec(10, 4, (-1, 16, 16))
  with pytest.raises(ValueError, match=r'growth must be an integer >= 1, got 0'):
    S.DenseNetSpec(10, 0, (16,) * 3)
  with pytest.raises(ValueError, match=r'reduction must be in \(0, 1\], got 0'):
    S.DenseNetSpec(10, 4, (16,) * 3, reduction=0)
  with pytest.raises(ValueError, match=r'reduction must be in \(0, 1\], got 1\.5'):
    S.DenseNetSpec(10, 4, (16,) * 3, reduction=1.5)
  with pytest.raises(ValueError, match=r'bottleneck must have 3 entries for this depth, got 2'):
    S.densenet_bc(10, 4).with_prunable((16, 16))


@pytest.mark.parametrize('depth', [20, 101, 0, 18.0, '18'])
def test_resnet_depth(depth):
  with pytest.raises(ValueError, match=r'ResNet depth must be one of \[18, 34, 50\], got ' +
                     repr(depth).replace('.', r'\.')):
    S.resnet(depth)
  with pytest.raises(ValueError, match=r'ResNet depth must be one of \[18, 34, 50\]'):
    S.ResNetSpec(depth, ())


def test_bad_resnet_inner():
  with pytest.raises(ValueError, match=r'inner must be a tuple of 8 blocks for ResNet-18, got 7'):
    S.ResNetSpec(18, ((64,),) * 7)
  with pytest.raises(ValueError, match=r'inner\[0\] must have 2 entries for this depth, got 1'):
    S.ResNetSpec(50, ((64,),) * 16)
  with pytest.raises(ValueError, match=r'inner\[2\]\[0\] must be an integer >= 0, got -3'):
    S.ResNetSpec(18, ((64,), (64,), (-3,)) + ((64,),) * 5)
  with pytest.raises(ValueError, match=r'expected 8 prunable widths, got 7'):
    S.resnet(18).with_prunable([1] * 7)
  with pytest.raises(ValueError, match=r'expected 8 prunable widths, got 9'):
    S.resnet(18).with_prunable([1] * 9)
  with pytest.raises(ValueError, match=r'stage_widths\[3\] must be an integer >= 1, got 0'):
    S.ResNetSpec(18, ((64,),) * 8, stage_widths=(64, 128, 256, 0))


_WRN10 = '{"family":"wrn","depth":10,"stage_widths":[16,32,64],"inner":[16,32,64]}'


def test_minimal_json_is_accepted():
  assert S.from_json(_WRN10) == S.WRNSpec(10, (16, 32, 64), (16, 32, 64))


@pytest.mark.parametrize('text, msg', [
    ('{"family":"vgg","depth":16}',
     r"unknown spec family 'vgg'; expected one of \['densenet_bc', 'module', 'resnet', 'wrn'\]"),
    ('{"depth":10}', r"unknown spec family None; expected one of \['densenet_bc', 'module', 'resnet'"),
    ('{"family":["wrn"],"depth":10}', r"unknown spec family \['wrn'\]; expected one of"),
    (_WRN10[:-1] + ',"dropout":0.3}',
     r"unknown field\(s\) \['dropout'\] for family 'wrn'; expected \['depth', 'in_channels', "
     r"'inner', 'stage_widths', 'stem'\]"),
    ('{"family":"wrn","depth":10}',
     r"invalid wrn spec: .*missing 2 required positional arguments: 'stage_widths' and 'inner'"),
    ('{"family":"wrn","depth":12,"stage_widths":[16,32,64],"inner":[16,32,64]}',
     r'WRN depth must be 6n\+4'),
    ('{"family":"resnet","depth":{"n":18},"inner":[]}', r'ResNet depth must be one of'),
    ('{"family":"wrn","depth":10,"stage_widths":[16,32,64],"inner":[16,-1,64]}',
     r'inner\[1\] must be an integer >= 0, got -1'),
    ('{not json', r'spec is not valid JSON: Expecting property name'),
    ('', r'spec is not valid JSON'),
    ('[16, 32, 64]', r'a spec must be a JSON object, got list'),
    ('"wrn"', r'a spec must be a JSON object, got str'),
])
def test_from_json_rejects(text, msg):
  with pytest.raises(ValueError, match=msg):
    S.from_json(text)


def test_from_dict_rejects_unknown_family():
  with pytest.raises(ValueError, match=r"unknown spec family 'mlp'"):
    S.from_dict({'family': 'mlp'})
  with pytest.raises(ValueError, match=r'a spec must be a JSON object, got list'):
    S.from_dict([('family', 'wrn')])


def test_load_errors_name_the_file(tmp_path):
  missing = tmp_path / 'nope.json'
  with pytest.raises(ValueError, match=r'cannot read spec file .*nope\.json: No such file'):
    S.load(missing)
  bad = tmp_path / 'bad.json'
  bad.write_text('{"family":"wrn",')
  with pytest.raises(ValueError, match=r'spec file .*bad\.json: spec is not valid JSON'):
    S.load(bad)
