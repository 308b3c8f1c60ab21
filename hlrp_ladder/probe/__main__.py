"""`python -m hlrp_ladder.probe FOLDER`: the node-side runner (see node.py)."""
import sys

from hlrp_ladder.probe.node import main

sys.exit(main(sys.argv[1:]))
