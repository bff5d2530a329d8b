"""tools: the commands that read or drive runs — decnode-eval (evalmodes), -landscape, -plot, -netmodel,
-report (report/) and -sweep (sweep/), and the guard on the files they write (outputs).

May import: everything below (the root modules and every other folder).
"""
