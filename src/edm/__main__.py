from edm.cli import main

main()
