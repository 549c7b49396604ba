"""jaxbud: structured pruning research in JAX (Crowley et al., "nip it in the bud")."""
__version__ = '0.1.0'


def load(path):
  """The network in a train workdir or prune snapshot (see jaxbud.inference.load).

  Imported on first call, so `import jaxbud` stays light.
  """
  from jaxbud import inference  # pylint: disable=g-import-not-at-top
  return inference.load(path)
