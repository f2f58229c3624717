"""Real Prometheus and Alertmanager servers for tests (Debian's ``prometheus`` packages).

Each runs on a free loopback port with its own storage directory and short
intervals, started by a fixture and stopped in its teardown. A test that
needs a binary that is missing skips, naming the package to install
(.ci/run installs them, so CI always runs these tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from knightwatch.testing import free_port, wait_until

__all__ = ["Alertmanager", "Prometheus", "binary", "promtool"]

START_S = 60.0  # generous: the machine is shared


def binary(*names: str, package: str) -> str:
    """The path of the first of ``names`` on PATH; skip the test, naming ``package``, if none."""
    for name in names:
        if found := shutil.which(name):
            return found
    pytest.skip(f"{names[0]} is not installed (apt-get install {package}; .ci/run does)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS`` (skip when it is not installed)."""
    return subprocess.run(
        [binary("promtool", package="prometheus"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _Server:
    """A server process on a free loopback port, logging to DIRECTORY/server.log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line (a subclass gives it)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it says it is ready."""
        argv = self.argv()  # first: it skips the test when the binary is missing
        with (self.directory / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        wait_until(self._ready, timeout=START_S, what=f"{argv[0]} to be ready")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self.process = None

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` and return the JSON answer."""
        response = httpx.get(self.url + path, params=params, timeout=30, trust_env=False)
        response.raise_for_status()
        return response.json()

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"{self.argv()[0]} exited {self.process.returncode}:\n{tail}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5, trust_env=False).is_success
        except httpx.HTTPError:
            return False


class Alertmanager(_Server):
    """``prometheus-alertmanager`` alone (no clustering), one route to a receiver doing nothing."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        config = {
            "global": {"resolve_timeout": "5m"},  # longer than any test: an end is knightwatch's
            "route": {"receiver": "nobody", "group_wait": "1s", "group_interval": "1s"},
            "receivers": [{"name": "nobody"}],
        }
        (directory / "alertmanager.yml").write_text(json.dumps(config))  # JSON is YAML

    def argv(self) -> list[str]:
        """The command line."""
        return [
            binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"),
            f"--config.file={self.directory / 'alertmanager.yml'}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (active, silenced or inhibited) with these labels."""
        found: list[dict[str, Any]] = self.get(
            "/api/v2/alerts", filter=[f'{k}="{v}"' for k, v in labels.items()]
        )
        return found

    def silence(self, comment: str, **labels: str) -> str:
        """Silence alerts with these labels for an hour; return the silence's ID."""
        response = httpx.post(
            f"{self.url}/api/v2/silences",
            json={
                "matchers": [
                    {"name": k, "value": v, "isRegex": False, "isEqual": True}
                    for k, v in labels.items()
                ],
                "startsAt": "2000-01-01T00:00:00Z",
                "endsAt": "2100-01-01T00:00:00Z",
                "createdBy": "test",
                "comment": comment,
            },
            timeout=30,
            trust_env=False,
        )
        response.raise_for_status()
        silence_id: str = response.json()["silenceID"]
        return silence_id


class Prometheus(_Server):
    """``prometheus`` with a given configuration (YAML text; rule files beside it), its own TSDB."""

    def __init__(self, directory: Path, config: str) -> None:
        super().__init__(directory)
        (directory / "prometheus.yml").write_text(config)

    def argv(self) -> list[str]:
        """The command line."""
        return [
            binary("prometheus", package="prometheus"),
            f"--config.file={self.directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        """Alerts of the loaded rules (pending or firing), as ``/api/v1/alerts`` lists them."""
        found: list[dict[str, Any]] = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if state in (None, a["state"])]

    def targets_up(self) -> bool:
        """Whether every active scrape target's last scrape succeeded."""
        targets = self.get("/api/v1/targets")["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)
