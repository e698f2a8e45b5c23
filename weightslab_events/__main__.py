"""``python -m weightslab_events`` runs the command line."""

from .cli import main

main()
