"""decnode-report: the command (command), its tables and text (text) and its figures (figures).

May import: what tools/ may, and tools/ itself.
"""
