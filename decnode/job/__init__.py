"""job: one training job end to end — the decnode-run CLI and worker (run), the training loop (trainer) and the
end-of-run report (report_end), the launchers (launch, launch_xla), restarts, preflight checks, checkpoints, the run directory, its lock, logger,
metrics file and trace.

May import: every folder but tools/.
"""
