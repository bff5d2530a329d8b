"""decnode: Decentralized Policy Gradients (DecPG) and parameter sharing (PS) on real processes.

The modules here are the shared vocabulary (config, yamlio, timing, topology, cli, elastic, smac_maps, registry,
extensions) and import no folder; run.py is the `python -m decnode.run` shim. Folders, lowest first: nn/ and envs/
< net/ < comm/ < marl/ < job/ < tools/, each importing only the root and the folders below it (README, "Layout").
"""

__version__ = "0.1.0"
