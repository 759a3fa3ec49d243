from msvol.cli import main

main()
