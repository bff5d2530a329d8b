"""A "no communication" learner, added from outside decnode: each agent trains alone on its own gradients — no
gossip, no all-reduce (tests/test_registries.py loads this file with --plugin).

It is the whole of what a new algorithm needs: a Combiner and one registry line. Its step is DecPG's between mixes
(LocalSGD: θᵢ ← θᵢ − η clip(gᵢ)); with local critics the critics train alone too. comm="none" tells the rest of the
code that it has no topology (the job builds no gossip plan, algo.k is not checked) and sends nothing to combine.
"""

from decnode.extensions import COMBINERS, CombinerEntry
from decnode.marl.combiners import LocalSGD


class NoComm(LocalSGD):
    """Every row steps on its own clipped gradient; before_backward/after_backward start nothing."""


COMBINERS.register("nocomm", CombinerEntry(NoComm, comm="none", label="no communication"))
