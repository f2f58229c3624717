"""Running knightwatch on real hosts: configuration files and systemd units.

- :mod:`knightwatch.hosting.configfiles`: where ``server.toml`` and
  ``agent.toml`` live (``/etc/knightwatch`` by default) and how one is read
  (strictly: an unknown key is refused, naming the file and the key).
- :mod:`knightwatch.hosting.units`: the systemd units of the server and the
  agent, rendered from the templates in ``templates/`` and written atomically.
"""
