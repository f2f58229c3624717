"""The dashboard: server-rendered pages over the control plane, live over Server-Sent Events.

An adapter like ``knightwatch.api``: it reads through the same domain
functions, and every change a browser makes goes through the operator API
itself (with the session cookie and its CSRF token), so the role table, the
safety policy and change control apply to a click exactly as to a command.
"""
