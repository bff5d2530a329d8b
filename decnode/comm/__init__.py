"""comm: moving tensors between ranks — the gloo transport and its process group (transport), message framing
(frames), the Fabric the learners talk to (fabric) and its XLA twin (xla), and the hang watchdog (watchdog).

May import: the root modules, nn/, envs/ and net/. With job/, the only folder that imports torch.distributed.
"""
