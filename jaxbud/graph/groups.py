"""Channel groups: the sets of variable slices that must be cut together.

A `Group` is one class of coupled channels: `size` channels, and for every variable leaf that
holds them an `Entry` saying which axis and which indices of that axis carry channel j. A
group is prunable unless something froze it (`frozen_by` says what and where). `Groups` is the
sequence of groups of one analysis, indexable by position or name, and prints as a table.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
  """Axis `axis` of the variable leaf at `path` (collection first, e.g. ('params', 'conv1',
  'kernel')): `index[i]` is the group channel held at position i of that axis, or -1."""
  path: tuple
  axis: int
  index: np.ndarray
  ndim: int
  part: str = ''  # '' (whole axis), '[a:b]' (a segment), '(factor j of k)' (a reshape factor)

  @property
  def leaf(self) -> str:
    return '/'.join(self.path)

  @property
  def module(self) -> tuple:
    """The module path: the path without its collection and leaf name."""
    return tuple(self.path[1:-1])

  def __repr__(self):
    return f'{self.leaf} axis {self.axis}{self.part}'


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
  name: str
  size: int
  entries: tuple
  frozen_by: tuple = ()

  @property
  def prunable(self) -> bool:
    return not self.frozen_by

  def __str__(self):
    state = 'prunable' if self.prunable else 'frozen: ' + '; '.join(self.frozen_by)
    lines = [f'{self.name}: {self.size} channel{"s" * (self.size != 1)}, {state}']
    lines += [f'    {e!r}' for e in self.entries]
    return '\n'.join(lines)


class Groups:
  """The groups of one analysis, in the order of their first leaf. Also holds the layout of
  the analysed variables (`treedef`, `paths`, `shapes`), which masks and compaction need."""

  def __init__(self, groups, treedef, paths, shapes):
    self.groups = tuple(groups)
    self.treedef, self.paths, self.shapes = treedef, tuple(paths), tuple(shapes)
    self._by_name = {g.name: g for g in self.groups}
    self.source = None  # (traced call, analysis) where analyze made them: the program to compact

  def __len__(self):
    return len(self.groups)

  def __iter__(self):
    return iter(self.groups)

  def __getitem__(self, key):
    if isinstance(key, str):
      if key not in self._by_name:
        from jaxbud.errors import UsageError  # pylint: disable=g-import-not-at-top
        raise UsageError(f'no group named {key!r}; groups are {list(self._by_name)[:6]}...')
      return self._by_name[key]
    return self.groups[key]

  def __contains__(self, name):
    return name in self._by_name

  @property
  def names(self):
    return tuple(g.name for g in self.groups)

  @property
  def prunable(self):
    return tuple(g for g in self.groups if g.prunable)

  @property
  def frozen(self):
    return tuple(g for g in self.groups if not g.prunable)

  def __str__(self):
    n = sum(g.size for g in self.prunable)
    head = (f'{len(self)} channel groups: {len(self.prunable)} prunable ({n} channels), '
            f'{len(self.frozen)} frozen')
    return '\n'.join([head] + [str(g) for g in self.groups])

  def __repr__(self):
    return f'<Groups: {len(self)} groups, {len(self.prunable)} prunable>'
