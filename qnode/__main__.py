from qnode.cli import main

main()
