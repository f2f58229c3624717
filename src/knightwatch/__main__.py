"""``python -m knightwatch`` runs the CLI."""

from knightwatch.cli.main import run

run()
