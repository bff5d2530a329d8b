"""nn: the networks and their maths — recurrent actor/critic rows (models), the GRU kernels (gru, native and its
C++ source) and the PPO/GAE losses with value normalisation (losses).

May import: the root modules (config, yamlio, timing, topology, ...) only.
"""
