"""decnode-sweep: the command (command), the sweep file and its cells (file), and the plan of what to run (plan).

May import: what tools/ may, and tools/ itself.
"""
