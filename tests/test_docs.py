"""docs/extending.md runs as written: its python blocks are executed in order."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extending_md_runs():
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert len(blocks) == 3
  namespace = {}
  exec(compile('\n'.join(blocks), 'docs/extending.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['snapshot']['params'] <= 70_000
  assert namespace['summary']['criterion'] == 'bn_scale'
