"""The control plane's runtime: its settings, the plane itself, the agent hub, background work.

Not HTTP (that is ``knightwatch.api``) and not the domain (``knightwatch.control``):
this package wires the domain to a running process. Import its modules directly
(``knightwatch.server.plane``); the package itself imports nothing, so reading
the settings does not load the whole control plane.
"""
