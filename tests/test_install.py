"""The accelerator extras (setup.py: cuda12, cuda13, tpu) resolve to a jax inside jaxbud's pin
with the matching plugin, as `pip install --dry-run` on this Python sees them (needs the package
index; skipped without it)."""
import json
import os
import re
import socket
import subprocess
import sys
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _index_reachable() -> bool:
  out = subprocess.run([sys.executable, '-m', 'pip', 'config', 'get', 'global.index-url'],
                       capture_output=True, text=True).stdout.strip()
  host = urllib.parse.urlparse(out or 'https://pypi.org/simple').hostname
  try:
    socket.create_connection((host, 443), timeout=5).close()
    return True
  except OSError:
    return False


@pytest.mark.parametrize('extra,plugins', [('cuda13', {'jax-cuda13-plugin', 'jax-cuda13-pjrt'}),
                                           ('tpu', {'libtpu'})])
def test_accelerator_extra_resolves_within_the_pin(extra, plugins, tmp_path):
  if not _index_reachable():
    pytest.skip('no package index reachable')
  report = tmp_path / 'report.json'
  r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '--ignore-installed',
                      '--quiet', '--no-build-isolation', '--report', str(report), f'{ROOT}[{extra}]'],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  versions = {i['metadata']['name'].lower().replace('_', '-'): i['metadata']['version']
              for i in json.loads(report.read_text())['install']}
  jax_version = versions['jax']
  assert re.fullmatch(r'0\.1[01]\.\d+', jax_version), jax_version  # setup.py's jax>=0.10,<0.12
  assert versions['jaxlib'] == jax_version
  assert plugins <= set(versions), sorted(versions)
  for name in plugins - {'libtpu'}:
    assert versions[name] == jax_version, (name, versions[name])
