"""tools: the commands that read or drive runs — decnode-eval (evalmodes), -landscape, -plot, -netmodel,
-report (report/), -sweep (sweep/) and -topology, and the guard on the files they write (outputs).

May import: everything below (the root modules and every other folder).
"""
