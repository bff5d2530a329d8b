"""marl: the learning algorithm — how rows are combined (combiners: DecPG gossip, PS all-reduce; push_sum: push-sum
gossip), the actor and critic blocks, acting in the environments, rollouts, evaluation and the paper's noise
metrics (noise).

May import: the root modules, nn/, envs/, net/ and comm/.
"""
