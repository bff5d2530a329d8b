"""net: the simulated network — link profiles and the preset registry, the per-node clock and emulator (profile),
the fixed compute costs the clock charges under compute: model (compute),
the fault-kind registry and fault injection (faults), one rank's Link the transport calls on send, receive and
collective (link), and the α–β prediction of an iteration's communication (model).

May import: the root modules, nn/ and envs/.
"""
