"""The OpenFeature provider, through the real openfeature-sdk client."""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from knightwatch.sdk.flags import Flags
from knightwatch.sdk.openfeature import KnightwatchProvider
from tests.sdk.test_flags import DECLARED, DIGEST, VALID, document, write

OF_DECLARED: dict[str, dict[str, Any]] = {
    **DECLARED,
    "config": {"kind": "ops", "type": "string", "default": "{}"},
    "broken-config": {"kind": "ops", "type": "string", "default": "{}"},
    "list-config": {"kind": "ops", "type": "string", "default": "{}"},
}


def of_document(**changes: Any) -> dict[str, Any]:
    """VALID plus three string flags holding JSON text."""
    doc: dict[str, Any] = json.loads(json.dumps(VALID))
    for name, value in (
        ("config", '{"limit": 3, "mode": "x"}'),
        ("broken-config", '{"limit": '),
        ("list-config", "[1, 2]"),
    ):
        doc["flags"][name] = {**OF_DECLARED[name], "value": value, "source": "fleet"}
    doc.update(changes)
    return doc


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KNIGHTWATCH_* variable leaks from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("KNIGHTWATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def flags_path(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    write(path, of_document())
    return path


@pytest.fixture
def provider(flags_path: Path) -> Iterator[KnightwatchProvider]:
    flags = Flags(flags_path, declared=OF_DECLARED, release=DIGEST)
    provider = KnightwatchProvider(flags)
    try:
        yield provider
    finally:
        flags.close()


@pytest.fixture
def client(provider: KnightwatchProvider) -> Iterator[OpenFeatureClient]:
    api.set_provider_and_wait(provider)
    try:
        yield api.get_client()
    finally:
        api.shutdown()


def test_metadata_and_readiness(client: OpenFeatureClient) -> None:
    assert api.get_provider_metadata().name == "knightwatch"
    assert client.get_provider_status() == ProviderStatus.READY


def test_boolean_from_the_fleet_is_static(client: OpenFeatureClient) -> None:
    details = client.get_boolean_details("rlp", False)
    assert details.value is True
    assert details.reason == Reason.STATIC
    assert details.variant == "fleet"
    assert details.error_code is None
    assert details.flag_metadata == {"kind": "release", "type": "boolean", "source": "fleet"}


def test_group_and_node_values_are_targeting_matches(client: OpenFeatureClient) -> None:
    integer = client.get_integer_details("batch-size", 0)
    assert (integer.value, integer.reason, integer.variant) == (
        25,
        Reason.TARGETING_MATCH,
        "group:canary",
    )
    ratio = client.get_float_details("ratio", 0.0)
    assert (ratio.value, ratio.reason, ratio.variant) == (1.0, Reason.TARGETING_MATCH, "node:node3")
    assert type(ratio.value) is float


def test_a_default_value_has_reason_default(client: OpenFeatureClient) -> None:
    details = client.get_boolean_details("kill.payments", False)
    assert (details.value, details.reason, details.variant) == (True, Reason.DEFAULT, "default")
    assert details.error_code is None


def test_strings_and_integers_as_floats(client: OpenFeatureClient) -> None:
    assert client.get_string_value("mode", "none") == "fast"
    as_float = client.get_float_details("batch-size", 0.5)
    assert as_float.value == 25.0
    assert type(as_float.value) is float
    assert as_float.error_code is None


def test_objects_are_parsed_from_json_text(client: OpenFeatureClient) -> None:
    details = client.get_object_details("config", {})
    assert details.value == {"limit": 3, "mode": "x"}
    assert details.reason == Reason.STATIC
    for name in ("broken-config", "list-config"):
        broken = client.get_object_details(name, {"fallback": True})
        assert broken.value == {"fallback": True}
        assert broken.error_code == ErrorCode.PARSE_ERROR
        assert broken.reason == Reason.ERROR


def test_an_undeclared_flag_is_not_found(client: OpenFeatureClient) -> None:
    details = client.get_boolean_details("nope", True)
    assert details.value is True
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND
    assert details.reason == Reason.ERROR
    assert "does not declare it" in (details.error_message or "")


@pytest.mark.parametrize(
    ("method", "key", "default"),
    [
        ("get_integer_details", "rlp", 7),
        ("get_boolean_details", "mode", False),
        ("get_string_details", "batch-size", "x"),
        ("get_float_details", "mode", 0.25),
        ("get_object_details", "rlp", {"a": 1}),
    ],
)
def test_another_type_is_a_type_mismatch(
    client: OpenFeatureClient, method: str, key: str, default: object
) -> None:
    details = getattr(client, method)(key, default)
    assert details.value == default
    assert details.error_code == ErrorCode.TYPE_MISMATCH
    assert details.reason == Reason.ERROR


def test_an_unusable_file_is_a_parse_error_with_the_safe_default(
    client: OpenFeatureClient, provider: KnightwatchProvider, flags_path: Path
) -> None:
    write(flags_path, b'{"format": 1, "no')
    details = client.get_integer_details("batch-size", 10)
    assert details.error_code == ErrorCode.PARSE_ERROR
    assert details.reason == Reason.DEFAULT
    assert details.error_message == provider.flags.problem
    assert "is not valid JSON" in (details.error_message or "")
    # the client hands back the caller's default on any error code; the provider
    # itself resolves to the release's declared safe default
    assert details.value == 10
    resolved = provider.resolve_integer_details("batch-size", 99)
    assert (resolved.value, resolved.reason, resolved.variant) == (10, Reason.DEFAULT, "default")
    assert resolved.error_code == ErrorCode.PARSE_ERROR


def test_a_change_of_the_file_is_a_configuration_changed_event(
    client: OpenFeatureClient, flags_path: Path
) -> None:
    events: queue.Queue[EventDetails] = queue.Queue()
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, events.put)
    write(
        flags_path,
        of_document(flags={**of_document()["flags"], **document(mode=("slow", "fleet"))["flags"]}),
    )
    event = events.get(timeout=20)
    assert event.provider_name == "knightwatch"
    assert event.flags_changed == ["batch-size", "mode", "ratio", "rlp"]
    assert client.get_string_value("mode", "none") == "slow"


def test_shutdown_stops_events_and_closes_an_owned_flags(
    flags_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNIGHTWATCH_FLAGS_FILE", str(flags_path))
    monkeypatch.setenv("KNIGHTWATCH_FLAG_DEFAULTS", json.dumps(OF_DECLARED))
    monkeypatch.setenv("KNIGHTWATCH_RELEASE_DIGEST", DIGEST)
    provider = KnightwatchProvider()
    api.set_provider_and_wait(provider)
    try:
        assert api.get_client().get_boolean_value("rlp", False) is True
        assert provider.flags._watcher is not None
    finally:
        api.shutdown()
    assert provider.flags._watcher is None
