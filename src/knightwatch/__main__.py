"""``python -m knightwatch`` runs the CLI."""

from knightwatch.cli.launch import run

run()
