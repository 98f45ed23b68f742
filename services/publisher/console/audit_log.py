"""The audit log (admins): every change staff made, newest first."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response

from services.publisher import audit
from services.publisher.auth import ADMIN_ROLES
from services.publisher.console.common import (
    PAGE_SIZE,
    database_of,
    render,
    require_user,
)

router = APIRouter(include_in_schema=False)


@router.get("/audit")
async def audit_page(request: Request, page: str = "1", event: str = "") -> Response:
    """Every change staff made, newest first (admins only, as ``GET /api/v1/audit``)."""
    user = await require_user(request, ADMIN_ROLES)
    number = int(page) if page.isdigit() and 0 < len(page) < 7 else 1
    chosen = event if event in audit.EVENTS else None
    async with database_of(request).read() as session:
        entries, total = await audit.list_entries(
            session=session, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, event=chosen
        )
    return render(
        request,
        "audit.html.j2",
        {
            "entries": entries,
            "total": total,
            "page": number,
            "pages": max(1, math.ceil(total / PAGE_SIZE)),
            "event": chosen,
            "events": audit.EVENTS,
        },
        user=user,
    )
