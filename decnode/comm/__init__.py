"""comm: moving tensors between ranks — the Fabric protocol the learners talk to (api), the gloo transport and its
process group (transport), message framing (frames), the gloo Fabric (fabric) and its XLA twin (xla), bounded-staleness
gossip on the simulated clock (stale) and by real arrival (arrival), and the hang watchdog (watchdog).

May import: the root modules, nn/, envs/ and net/. With job/, the only folder that imports torch.distributed.
"""
