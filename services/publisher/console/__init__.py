"""The staff console and the coordinators' dashboard (contract §3, "The console").

Who sees what: every signed-in role (staff, coordinator, admin) may read the actions, their
previews, their live counts and the overview, because staff follow the actions they wrote.
Composing, editing, publishing, follow-ups and closing are for staff and admin, as in the API.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from services.publisher.console import (
    action_page,
    audit_log,
    compose,
    federation,
    index,
    signin,
    webhooks,
)
from services.publisher.console.common import (
    CONSOLE_HEADERS,
    HERE,
    ConsoleError,
    SignInRequired,
    render,
    see_other,
)
from services.publisher.sessions import SessionSigner, signed_in_user
from services.publisher.sign_in_store import DatabaseSignInThrottle
from services.publisher.sign_in_throttle import MemorySignInThrottle

__all__ = ["CONSOLE_HEADERS", "install_console", "router"]

# Every page of the console, in one router (the authorization matrix walks its routes).
router = APIRouter(include_in_schema=False)
for _page in (signin, index, compose, action_page, audit_log, webhooks, federation):
    router.include_router(_page.router)


def install_console(app: FastAPI) -> None:
    app.state.session_signer = SessionSigner(app.state.settings)
    # Several publisher processes share one PostgreSQL, and so the counts; SQLite is one process.
    database = app.state.database
    app.state.sign_in_throttle = (
        MemorySignInThrottle()
        if database.is_sqlite
        else DatabaseSignInThrottle(database.sessionmaker)
    )
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        user = await signed_in_user(request)
        return render(
            request,
            "error.html.j2",
            {"title": exc.title, "message": exc.message},
            status=exc.status,
            user=user,
        )

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return see_other("/login?next=" + quote(target, safe=""))
