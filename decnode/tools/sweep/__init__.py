"""decnode-sweep: the command (command), the sweep file and its cells (file), the plan of what to run (plan), and
for --launcher slurm what SLURM is asked (slurm), the array task that runs one cell (task) and --status (status).

May import: what tools/ may, and tools/ itself.
"""
