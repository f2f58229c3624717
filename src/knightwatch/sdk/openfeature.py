"""An OpenFeature provider over :class:`knightwatch.sdk.flags.Flags` (openfeature-sdk >= 0.8).

::

    from openfeature import api
    from knightwatch.sdk.openfeature import KnightwatchProvider

    api.set_provider(KnightwatchProvider())
    api.get_client().get_boolean_value("rlp", False)

Values are the ones the agent wrote to flags.json for this node; the
evaluation context is not used (targeting happens in the control plane).
Reasons: a value from the fleet scope is STATIC, from a group or node scope
TARGETING_MATCH, the declared default DEFAULT. A name the release does not
declare is FLAG_NOT_FOUND, a flag of another type TYPE_MISMATCH; when the
file is unusable, resolution returns the declared safe default with reason
DEFAULT and error code PARSE_ERROR (note the OpenFeature client then hands
the caller's own default to the caller, as it does for every error code).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from knightwatch.sdk.flags import FlagDetails, FlagNotDeclaredError, Flags

__all__ = ["KnightwatchProvider"]

PROVIDER_NAME = "knightwatch"

T = TypeVar("T")
ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]


def _reason(source: str) -> Reason:
    if source == "fleet":
        return Reason.STATIC
    if source.startswith(("group:", "node:")):
        return Reason.TARGETING_MATCH
    return Reason.DEFAULT


def _error(default: T, code: ErrorCode, message: str) -> FlagResolutionDetails[T]:
    return FlagResolutionDetails(
        value=default, error_code=code, error_message=message, reason=Reason.ERROR
    )


def _resolved(found: FlagDetails, value: T) -> FlagResolutionDetails[T]:
    """The resolution of a declared flag of the right type."""
    metadata = {"kind": found.kind, "type": found.type, "source": found.source}
    if found.problem is not None and found.source == "default":
        return FlagResolutionDetails(
            value=value,
            error_code=ErrorCode.PARSE_ERROR,
            error_message=found.problem,
            reason=Reason.DEFAULT,
            variant=found.source,
            flag_metadata=metadata,
        )
    return FlagResolutionDetails(
        value=value, reason=_reason(found.source), variant=found.source, flag_metadata=metadata
    )


class KnightwatchProvider(AbstractProvider):
    """OpenFeature provider answering from a :class:`Flags` (one from the environment if None).

    A Flags the provider built itself is closed at shutdown; one given to it
    is left open. Changes of flags.json are emitted as
    PROVIDER_CONFIGURATION_CHANGED with ``flags_changed``.
    """

    def __init__(self, flags: Flags | None = None) -> None:
        super().__init__()
        self._owned = flags is None
        self._flags = flags if flags is not None else Flags()

    @property
    def flags(self) -> Flags:
        """The Flags this provider answers from."""
        return self._flags

    def get_metadata(self) -> Metadata:
        """Name the provider ``knightwatch``."""
        return Metadata(name=PROVIDER_NAME)

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Start watching flags.json so changes become provider events."""
        self._flags.on_change(self._changed)

    def shutdown(self) -> None:
        """Stop emitting change events; close the Flags if the provider built it."""
        self._flags.remove_on_change(self._changed)
        if self._owned:
            self._flags.close()

    def _changed(self, names: frozenset[str]) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=sorted(names), message="flags.json changed")
        )

    def _lookup(
        self, key: str, default: T, types: tuple[str, ...]
    ) -> FlagDetails | FlagResolutionDetails[T]:
        """The declared flag if it has one of ``types``, else the error resolution."""
        try:
            found = self._flags.details(key)
        except FlagNotDeclaredError as exc:
            return _error(default, ErrorCode.FLAG_NOT_FOUND, str(exc))
        if found.type not in types:
            message = f"flag {key!r} is a {found.type} flag, not a {' or '.join(types)} flag"
            return _error(default, ErrorCode.TYPE_MISMATCH, message)
        return found

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Resolve a boolean flag."""
        found = self._lookup(flag_key, default_value, ("boolean",))
        if not isinstance(found, FlagDetails):
            return found
        return _resolved(found, bool(found.value))

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        """Resolve a string flag."""
        found = self._lookup(flag_key, default_value, ("string",))
        if not isinstance(found, FlagDetails):
            return found
        return _resolved(found, str(found.value))

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        """Resolve an integer flag."""
        found = self._lookup(flag_key, default_value, ("integer",))
        if not isinstance(found, FlagDetails):
            return found
        return _resolved(found, int(found.value))

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Resolve a float flag; an integer flag is acceptable too (as a float)."""
        found = self._lookup(flag_key, default_value, ("float", "integer"))
        if not isinstance(found, FlagDetails):
            return found
        return _resolved(found, float(found.value))

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        """Resolve a string flag holding the text of a JSON object, as a dict."""
        found = self._lookup(flag_key, default_value, ("string",))
        if not isinstance(found, FlagDetails):
            return found
        try:
            parsed = json.loads(str(found.value))
        except (ValueError, RecursionError) as exc:
            message = f"flag {flag_key!r} is not the text of a JSON object ({str(exc)[:80]})"
            return _error(default_value, ErrorCode.PARSE_ERROR, message)
        if not isinstance(parsed, dict):
            message = f"flag {flag_key!r} holds JSON that is not an object"
            return _error(default_value, ErrorCode.PARSE_ERROR, message)
        return _resolved(found, parsed)
