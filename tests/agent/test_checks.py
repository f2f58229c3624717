"""Health, smoke and version checks against the example SMARS router, run for real."""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from knightwatch.agent.checks import probe, read_version, run_smoke, wait_healthy
from knightwatch.agent.errors import ServiceError
from knightwatch.agent.runenv import ServiceLaunch
from knightwatch.agent.servicelog import ServiceLog
from knightwatch.agent.supervisor import RestartPolicy, Supervisor
from knightwatch.bundle.spec import HealthCheck, ServiceSpec, SmokeCheck, load_spec
from knightwatch.testing import free_port
from tests.agent.conftest import run

RELEASE_ID = "smars@2012.8.1+abcdefabcdef"


def smars_launch(source: Path, port: int | None, **changes: Any) -> ServiceLaunch:
    """The example's own [service] spec (with changes), run from ``source``."""
    spec = load_spec(source).service
    assert spec is not None
    data = {**spec.model_dump(), **changes}
    variables = {"KNIGHTWATCH_RELEASE_ID": RELEASE_ID, "KNIGHTWATCH_NODE": "node1"}
    if port is not None:
        variables["KNIGHTWATCH_SERVICE_PORT"] = str(port)
    return ServiceLaunch("a" * 64, RELEASE_ID, source, ServiceSpec.model_validate(data), variables)


@asynccontextmanager
async def running(launch: ServiceLaunch, tmp_path: Path) -> AsyncIterator[Supervisor]:
    """The service started by a supervisor, stopped afterwards whatever happens."""
    sup = Supervisor(ServiceLog(tmp_path / "service.log"), policy=RestartPolicy())
    try:
        await sup.start(launch)
        yield sup
    finally:
        await sup.stop()


class TestHttpChecks:
    def test_smars_turns_healthy_passes_smoke_and_reports_its_version(
        self, example_source: Path, tmp_path: Path, reap: Callable[[int], None]
    ) -> None:
        """The example router's health, smoke and version checks pass on its assigned port."""
        launch = smars_launch(example_source, free_port())

        async def scenario() -> None:
            async with running(launch, tmp_path) as sup:
                reap(sup.status().pid or 0)
                assert await sup.wait_ready() is None
                assert await run_smoke(launch.spec.smoke, launch) is None
                assert await read_version(launch) == (RELEASE_ID, None)

        run(scenario())

    def test_failing_smoke_names_the_check_and_what_was_seen(
        self, example_source: Path, tmp_path: Path, reap: Callable[[int], None]
    ) -> None:
        """A smoke check whose body or status is wrong fails with the URL and the difference."""
        port = free_port()
        launch = smars_launch(example_source, port)
        url = f"http://127.0.0.1:{port}"
        body = SmokeCheck(name="body", http=url + "/health", expect_body="Power Peg")
        status = SmokeCheck(name="status", http=url + "/nope")

        async def scenario() -> None:
            async with running(launch, tmp_path) as sup:
                reap(sup.status().pid or 0)
                assert await sup.wait_ready() is None
                reason = await run_smoke([body], launch)
                assert reason == (
                    f"smoke check 'body' failed: GET {url}/health: "
                    "the body does not contain 'Power Peg'"
                )
                reason = await run_smoke([status], launch)
                assert reason == (
                    f"smoke check 'status' failed: GET {url}/nope: status 404, expected 200"
                )

        run(scenario())

    def test_nothing_listening_is_unhealthy_until_the_deadline(self, example_source: Path) -> None:
        """Polling a port nobody serves ends at the deadline with the last failure."""
        port = free_port()
        check = HealthCheck(http=f"http://127.0.0.1:{port}/health", timeout_s=1.0)
        launch = smars_launch(example_source, port)
        reason = run(wait_healthy(check, launch, timeout_s=0.5, interval_s=0.1))
        assert reason is not None
        assert reason.startswith("health check 'health' still failing after 0.5 s: GET ")

    def test_polling_does_not_load_the_ca_bundle_per_probe(
        self, example_source: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every probe shares one TLS context: loading the CA bundle costs ~25 ms of CPU each.

        A client per probe, five probes a second per starting service, starved the
        services of eight agents on two cores past their health deadline.
        """
        made: list[object] = []
        real = ssl.create_default_context

        def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
            made.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(ssl, "create_default_context", counted)
        port = free_port()
        check = HealthCheck(http=f"http://127.0.0.1:{port}/health", timeout_s=1.0)
        launch = smars_launch(example_source, port)
        for _ in range(3):
            assert run(wait_healthy(check, launch, timeout_s=0.3, interval_s=0.05)) is not None
        assert len(made) <= 1, f"{len(made)} TLS contexts made for one poller"


class TestCommandChecks:
    def test_exit_status_and_output_are_reported(self, example_source: Path) -> None:
        """A command check passes on exit 0 and otherwise reports its status and last line."""
        launch = smars_launch(example_source, free_port())
        good = HealthCheck(command=[sys.executable, "-c", "pass"])
        bad = HealthCheck(command=[sys.executable, "-c", "print('db down'); raise SystemExit(4)"])
        assert run(probe(good, launch)) is None
        reason = run(probe(bad, launch))
        assert reason is not None and reason.endswith("exit status 4: db down")

    def test_timeout_kills_the_check(self, example_source: Path) -> None:
        """A command check that hangs is killed at its timeout and reported."""
        launch = smars_launch(example_source, free_port())
        slow = HealthCheck(
            command=[sys.executable, "-c", "import time; time.sleep(600)"], timeout_s=0.3
        )
        reason = run(probe(slow, launch))
        assert reason is not None and "no exit within 0.3 s" in reason


class TestVariables:
    def test_missing_port_is_named_with_a_hint(self, example_source: Path) -> None:
        """A spec using ${KNIGHTWATCH_SERVICE_PORT} on an agent without a port says so."""
        launch = smars_launch(example_source, None)
        with pytest.raises(ServiceError, match=r"KNIGHTWATCH_SERVICE_PORT.*--service-port"):
            launch.environment()

    def test_substitution_in_argv_env_and_urls(self, example_source: Path) -> None:
        """Variables are substituted in env values and URLs; other ${…} text is left alone."""
        launch = smars_launch(example_source, 18123)
        assert launch.environment()["SMARS_PORT"] == "18123"
        assert launch.expand("${HOME} ${KNIGHTWATCH_NODE}") == "${HOME} node1"
        assert launch.argv(["x", "${KNIGHTWATCH_RELEASE_ID}"]) == ["x", RELEASE_ID]
