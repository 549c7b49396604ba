"""Union-find over array axes, with concatenation and product structure.

Every axis of every value in a traced program is a node of a known size. `unify` records that
two axes index the same channels (element i of one is element i of the other). A class of nodes
may carry structure: a concatenation of segments (``cat``) or a row-major product of factors
(``prod``, major first), each part itself a node. Unifying two structured classes refines both
to common boundaries, so a residual add of two concatenations, or a flatten unified with a
dense kernel's input axis, ends up with the same parts on both sides. A class that cannot be
refined exactly (a concatenation meeting a product, factors that do not divide) is frozen,
never guessed. A frozen class freezes every part below it.
"""
import math

CAT, PROD = 'cat', 'prod'


class Unrefinable(Exception):
  """Two structures (or a cut) have no common refinement; the caller freezes what it touched."""


class Axes:
  """Nodes are ints. `struct[root]` is None, (CAT, parts) or (PROD, factors); parts are nodes
  whose sizes sum (CAT) or multiply (PROD) to the root's size."""

  def __init__(self):
    self.parent, self.size, self.struct = [], [], []
    self.frozen = {}  # root -> list of reasons

  def new(self, size: int, struct=None) -> int:
    n = len(self.parent)
    self.parent.append(n)
    self.size.append(int(size))
    self.struct.append(struct)
    return n

  def find(self, n: int) -> int:
    root = n
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[n] != root:
      self.parent[n], n = root, self.parent[n]
    return root

  def structure(self, n: int):
    return self.struct[self.find(n)]

  def freeze(self, n: int, reason: str):
    reasons = self.frozen.setdefault(self.find(n), [])
    if len(reasons) < 4 and reason not in reasons:
      reasons.append(reason)

  def reasons(self, n: int) -> list:
    return self.frozen.get(self.find(n), [])

  def compose(self, kind: str, parts) -> int:
    """A new node made of `parts` (size-0 segments and size-1 factors dropped)."""
    parts = [p for p in parts if self.size[p] != (0 if kind == CAT else 1)]
    if len(parts) == 1:
      return parts[0]
    sizes = [self.size[p] for p in parts]
    total = sum(sizes) if kind == CAT else math.prod(sizes)
    return self.new(total, (kind, parts) if parts else None)

  def _link(self, a: int, b: int):
    """Makes root b the root of root a's class; b keeps its structure."""
    self.parent[a] = b
    for r in self.frozen.pop(a, []):
      self.freeze(b, r)

  def unify(self, a: int, b: int):
    """Axes a and b index the same channels. Raises Unrefinable if their structures clash."""
    a, b = self.find(a), self.find(b)
    if a == b:
      return
    if self.size[a] != self.size[b]:
      raise ValueError(f'internal error: unifying axes of sizes {self.size[a]} and {self.size[b]}')
    sa, sb = self.struct[a], self.struct[b]
    if sa is None or sb is None:
      if sa is None:
        self._link(a, b)
      else:
        self._link(b, a)
      return
    if sa[0] != sb[0]:
      raise Unrefinable('a concatenation meets a reshape (product) on the same axis')
    pa, pb = self.align_segments(a, b) if sa[0] == CAT else self.align_factors(a, b)
    self._link(a, b)
    for x, y in zip(pa, pb):
      self.unify(x, y)

  # Concatenations -------------------------------------------------------------------------
  def segments(self, n: int) -> list:
    """The flat list of non-CAT parts of n (n itself if it is no concatenation)."""
    s = self.structure(n)
    if s is None or s[0] != CAT:
      return [n]
    return [q for p in s[1] for q in self.segments(p)]

  def cut(self, n: int, offset: int):
    """Refines n so that `offset` is a segment boundary (an atom becomes two segments)."""
    r = self.find(n)
    if offset <= 0 or offset >= self.size[r]:
      return
    s = self.struct[r]
    if s is None:
      self.struct[r] = (CAT, [self.new(offset), self.new(self.size[r] - offset)])
      return
    if s[0] != CAT:
      raise Unrefinable(f'a cut at offset {offset} splits a reshaped (product) axis')
    start = 0
    for p in s[1]:
      size = self.size[self.find(p)]
      if start < offset < start + size:
        self.cut(p, offset - start)
        return
      start += size

  def boundaries(self, n: int) -> list:
    bounds, pos = [], 0
    for p in self.segments(n):
      pos += self.size[self.find(p)]
      bounds.append(pos)
    return bounds[:-1]

  def align_segments(self, a: int, b: int):
    """Equal-length segment lists of a and b with pairwise equal sizes (both cut to the union of
    their boundaries)."""
    ba, bb = self.boundaries(a), self.boundaries(b)
    for offset in bb:
      self.cut(a, offset)
    for offset in ba:
      self.cut(b, offset)
    return self.segments(a), self.segments(b)

  def segment(self, n: int, start: int, stop: int) -> int:
    """The node of n's range [start, stop), cutting n at both ends."""
    if start == 0 and stop == self.size[self.find(n)]:
      return n
    self.cut(n, start)
    self.cut(n, stop)
    parts, pos = [], 0
    for p in self.segments(n):
      size = self.size[self.find(p)]
      if start <= pos and pos + size <= stop:
        parts.append(p)
      pos += size
    return self.compose(CAT, parts)

  # Products -------------------------------------------------------------------------------
  def factors(self, n: int) -> list:
    """The flat list of non-PROD factors of n, major first (size-1 factors dropped)."""
    s = self.structure(n)
    if s is None or s[0] != PROD:
      return [n] if self.size[self.find(n)] != 1 else []
    return [q for p in s[1] for q in self.factors(p)]

  def split_minor(self, n: int, lo: int):
    """Refines n into (major, minor) factors with the minor one of size lo: (hi node, lo node)."""
    r = self.find(n)
    size = self.size[r]
    if size % lo:
      raise Unrefinable(f'an axis of size {size} has no factor {lo}')
    if lo == 1:
      return n, self.new(1)
    if lo == size:
      return self.new(1), n
    if self.struct[r] is None:
      hi_n, lo_n = self.new(size // lo), self.new(lo)
      self.struct[r] = (PROD, [hi_n, lo_n])
      return hi_n, lo_n
    if self.struct[r][0] != PROD:
      raise Unrefinable(f'a reshape splits a concatenated axis of size {size}')
    fs, acc, minor = self.factors(r), 1, []
    while acc < lo:
      f = fs.pop()
      fsize = self.size[self.find(f)]
      if acc * fsize <= lo:
        minor.insert(0, f)
        acc *= fsize
      else:
        hi_f, lo_f = self.split_minor(f, lo // acc)
        fs.append(hi_f)
        minor.insert(0, lo_f)
        acc = lo
    return self.compose(PROD, fs), self.compose(PROD, minor)

  def match_factors(self, parts: list, sizes: list):
    """Regroups the factor nodes `parts` (major first) into nodes of `sizes` (major first),
    peeling from the minor end and splitting factors where they straddle. Returns (nodes of
    the matched minor sizes, how many major sizes were left unmatched, the parts left over,
    the minor factors already matched into the first unmatched size). A reshape keeps what
    matched (an NHWC flatten's channel) and freezes the rest."""
    parts, out = list(parts), []
    for t in reversed(sizes):
      acc, minor = 1, []
      while acc < t and parts:
        f = parts[-1]
        fsize = self.size[self.find(f)]
        if acc * fsize <= t and t % (acc * fsize) == 0:
          parts.pop()
          minor.insert(0, f)
          acc *= fsize
        elif fsize % (t // acc) == 0 and t % acc == 0:
          parts.pop()
          hi_f, lo_f = self.split_minor(f, t // acc)
          parts.append(hi_f)
          minor.insert(0, lo_f)
          acc = t
        else:
          break
      if acc != t:
        return out, len(sizes) - len(out), parts, minor
      out.insert(0, self.compose(PROD, minor))
    return out, 0, parts, []

  def align_factors(self, a: int, b: int):
    """Equal-length factor lists of a and b with pairwise equal sizes, or Unrefinable."""
    fa, fb = self.factors(a), self.factors(b)
    sizes_b = [self.size[self.find(f)] for f in fb]
    out, unmatched, rest, _ = self.match_factors(fa, sizes_b)
    if unmatched or rest:
      raise Unrefinable('two reshapes of one axis have no common factors')
    return out, fb

  def atoms(self, n: int) -> list:
    """Every unstructured class below n (n's root itself if it has no structure)."""
    r = self.find(n)
    s = self.struct[r]
    if s is None:
      return [r]
    return [a for p in s[1] for a in self.atoms(p)]
