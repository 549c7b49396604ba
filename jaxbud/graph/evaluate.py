"""Re-evaluating a traced program equation by equation, with one hook for what each does.

The compacted program (`program.py`: the parameters rewritten for the new shapes) and the
generic Fisher (`saliency.py`: gates multiplied into the operands where groups are consumed) are
both this walk with a different `bind`.
"""
import jax
from jax.extend import core as jex_core

from jaxbud.graph import rules

REMAT = ('remat', 'remat2', 'checkpoint')


def evaluate(jaxpr, consts, args, bind, inline=lambda site: True, carry=None, site=''):
  """Evaluates the open `jaxpr` like `jax.core.eval_jaxpr`; returns its outputs.

  Equation i has the site f'{site}{i}', as `rules.interpret` numbers them. A call (jit, custom
  derivative rules, remat) whose inner site prefix `inline` accepts is evaluated the same way
  inside, remat re-applied around it; every other equation is `bind(eqn, ins, site, carry)`,
  which returns its outputs as a list. `carry` (the gates) goes through remat as an argument,
  so that gradients with respect to it flow.
  """
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
  for i, eqn in enumerate(jaxpr.eqns):
    here = f'{site}{i}'
    ins = [read(v) for v in eqn.invars]
    key = rules.CALLS.get(eqn.primitive.name, '')
    callee = eqn.params.get(key) if key else None
    if callee is not None and inline(here + '/'):
      closed = callee if isinstance(callee, jex_core.ClosedJaxpr) else None
      inner = closed.jaxpr if closed is not None else callee
      inner_consts = closed.consts if closed is not None else []
      body = lambda a, c, inner=inner, k=inner_consts, h=here: evaluate(
          inner, k, a, bind, inline, c, h + '/')
      if eqn.primitive.name in REMAT:
        body = jax.checkpoint(body, prevent_cse=eqn.params.get('prevent_cse', True),
                              policy=eqn.params.get('policy'))
      outs = body(ins, carry)
    else:
      outs = bind(eqn, ins, here, carry)
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def bind(eqn, ins, params=None) -> list:
  """The equation's primitive applied to `ins` (with `params`, default its own): its outputs."""
  with eqn.ctx.manager:
    outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(
        eqn.params if params is None else params))
  return outs if eqn.primitive.multiple_results else [outs]
