"""`python -m decnode.run` and `torchrun ... -m decnode.run`: the decnode-run command, which lives in job/run.py.

A shim only, so the design card's command keeps working: it runs main once, and only when run as a module.
"""

from decnode.job.run import main

if __name__ == "__main__":
    main()
