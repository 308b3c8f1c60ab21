from hlrp_ladder.cli import main

main()
