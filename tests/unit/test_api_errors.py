"""Domain errors map to HTTP statuses in one place."""

from __future__ import annotations

import pytest

from knightwatch.api.errors import status_for
from knightwatch.control.alerts import AlertNotFoundError
from knightwatch.errors import (
    BlobNotFoundError,
    GateRefusedError,
    InvalidInputError,
    KnightwatchError,
    NotFoundError,
    ReleaseNotFoundError,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (AlertNotFoundError(7), 404),
        (NotFoundError("no halt 7"), 404),
        (ReleaseNotFoundError("r"), 404),
        (BlobNotFoundError("0" * 64), 404),
        (InvalidInputError("bad"), 400),
        (GateRefusedError("drift"), 409),
        (KnightwatchError("boom"), 500),
    ],
)
def test_status_for(error: KnightwatchError, status: int) -> None:
    """Whatever is named but absent is 404; bad input 400; a gate 409; the rest 500."""
    assert status_for(error) == status
