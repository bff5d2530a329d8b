import os
import sys

# Tests import the helpers module `multiproc` that sits beside them.
sys.path.insert(0, os.path.dirname(__file__))
