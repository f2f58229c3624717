"""The ``knightwatch`` command: a thin Typer + Rich layer over the library."""
