"""jaxbud: structured pruning research in JAX (Crowley et al., "nip it in the bud")."""
__version__ = '0.1.0'
