"""``python -m wageubn_sim.cli``: the `wageubn-sim` command line."""
from . import main

main()
