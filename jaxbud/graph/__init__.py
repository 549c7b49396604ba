"""Prune any Flax CNN: channel dependency groups read from the jaxpr (docs/any_model.md).

    import jaxbud.graph as jg
    groups = jg.analyze(model.apply, variables, images)  # print(groups) shows every group
    scores = jg.fisher(model.apply, variables, batch, loss_fn)   # per group and channel
    keep = jg.select(groups, scores, n=32)                # global lowest-first
    small = jg.compact(groups, variables, keep, opt_state=opt_state, factory=make_model)
    small.apply(small.variables, images)                  # or, without a factory, the program

An nnx module: jg.analyze(module, images), jg.compact(groups, module, keep) (in place).
"""
from jaxbud.graph.analysis import analyze
from jaxbud.graph.compact import compact
from jaxbud.graph.compact import Compacted
from jaxbud.graph.compact import masks
from jaxbud.graph.compact import select
from jaxbud.graph.groups import Entry
from jaxbud.graph.groups import Group
from jaxbud.graph.groups import Groups
from jaxbud.graph.saliency import fisher
from jaxbud.graph.saliency import fisher_step
