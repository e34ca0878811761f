"""``python -m controller`` runs the command line."""

from controller.cli import main

main()
