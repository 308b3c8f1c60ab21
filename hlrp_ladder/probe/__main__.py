import sys

from hlrp_ladder.probe.node import main

sys.exit(main(sys.argv[1:]))
