"""net: the simulated network — link profiles and presets, the per-node clock and emulator (profile), fault
injection (faults) and the α–β prediction of an iteration's communication (model).

May import: the root modules, nn/ and envs/.
"""
