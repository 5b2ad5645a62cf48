from hfbt.cli import main

main()
