"""Post-incident reviews: what an emergency change leaves behind until someone else looks.

An emergency lets one person move the fleet back to a known state at once;
the review item it opens stays open until a different person closes it
with a note of what was found.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from knightwatch.control import auditlog
from knightwatch.control.users import PermissionDeniedError
from knightwatch.errors import GateRefusedError, NotFoundError
from knightwatch.store import ChangeRequest, ReviewItem

__all__ = ["close_review", "list_reviews", "open_review", "review_json"]


def open_review(session: Session, row: ChangeRequest, by: str, *, now: datetime) -> ReviewItem:
    """Open the review of emergency change ``row``, which ``by`` just executed."""
    review = ReviewItem(
        change_id=row.id,
        opened_by=by,
        opened_at=now,
        summary=f"emergency {row.kind} by {by}: {row.reason}",
    )
    session.add(review)
    session.flush()
    auditlog.append(
        session,
        actor=by,
        action="review.opened",
        obj=f"review:{review.id}",
        at=now,
        payload={"change": row.id, "kind": row.kind},
    )
    return review


def close_review(
    session: Session, review_id: int, by: str, note: str, *, now: datetime
) -> ReviewItem:
    """Close a post-incident review: never by the person whose emergency opened it."""
    review = session.get(ReviewItem, review_id, with_for_update=True)
    if review is None:
        raise NotFoundError(f"no review item {review_id}", hint="`knightwatch change reviews`")
    if review.closed_at is not None:
        raise GateRefusedError(f"review item {review_id} was closed by {review.closed_by}")
    if by == review.opened_by:
        raise PermissionDeniedError(
            f"{by} acted in the emergency and cannot close its review",
            hint="someone else reviews what was done",
        )
    review.closed_by, review.closed_at, review.note = by, now, note
    auditlog.append(
        session,
        actor=by,
        action="review.closed",
        obj=f"review:{review.id}",
        at=now,
        payload={"change": review.change_id, "note": note},
    )
    return review


def list_reviews(session: Session, *, open_only: bool) -> list[dict[str, Any]]:
    """Post-incident review items, newest first."""
    statement = select(ReviewItem).order_by(ReviewItem.id.desc())
    if open_only:
        statement = statement.where(ReviewItem.closed_at.is_(None))
    return [review_json(r) for r in session.scalars(statement)]


def review_json(review: ReviewItem) -> dict[str, Any]:
    """A review item as the API shows it."""
    return {
        "id": review.id,
        "change_id": review.change_id,
        "summary": review.summary,
        "opened_by": review.opened_by,
        "opened_at": review.opened_at.isoformat(),
        "open": review.closed_at is None,
        "closed_by": review.closed_by,
        "closed_at": review.closed_at.isoformat() if review.closed_at else None,
        "note": review.note,
    }
