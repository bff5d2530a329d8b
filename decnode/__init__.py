"""decnode: Decentralized Policy Gradients (DecPG) and parameter sharing (PS) on real processes."""

__version__ = "0.1.0"
