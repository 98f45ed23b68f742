"""Who may call a route, checked before anything else of the request is looked at (contract §7).

FastAPI reads and decodes the body before it runs a route's dependencies, and runs them in the
order of the signature, so a dependency alone cannot keep a caller without a token from learning
that an id is malformed (404) or a body broken (422). ``CallerFirstRoute`` runs the route's
``Guard`` first: no valid token is 401, the wrong role 403, and only then are the path, the query
and the body read. The guard is still an ordinary dependency of the route, so the handler gets
who is calling and the OpenAPI document shows the security scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

CALLER = "uanet.caller"  # where the guard leaves who is calling, in the request's scope


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=detail)


class Guard:
    """A route dependency saying who may call. ``check`` raises 401 or 403, or returns the caller.

    Subclasses may widen ``__call__``'s signature (a bearer scheme, for the OpenAPI document);
    they must not read the body, the path or the query.
    """

    async def check(self, request: Request) -> Any:
        raise NotImplementedError

    async def caller(self, request: Request) -> Any:
        """The caller, checked once per request: by the route before anything, or here."""
        if CALLER not in request.scope:
            request.scope[CALLER] = await self.check(request)
        return request.scope[CALLER]

    # Subclasses define ``__call__`` (the dependency FastAPI runs), returning ``caller()``.


def _guards(dependant: Dependant) -> list[Guard]:
    found: list[Guard] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, Guard):
            found.append(sub.call)
        found.extend(_guards(sub))
    return found


class CallerFirstRoute(APIRoute):
    """A route whose guard runs before FastAPI parses anything of the request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        guards = _guards(self.dependant)
        if not guards:
            return handler
        guard = guards[0]

        async def guarded(request: Request) -> Response:
            await guard.caller(request)
            return await handler(request)

        return guarded


def guard_unknown_api_paths(app: FastAPI, guard: Guard, prefix: str = "/api/v1/") -> None:
    """Any other path or method under the API answers 401 without a token too ("whatever its
    path"), then 403, and only then the router's own 404 or 405. Called once per prefix (the
    API, OSDI's), each with its own guard."""
    guards: dict[str, Guard] | None = getattr(app.state, "unknown_path_guards", None)
    if guards is not None:
        guards[prefix] = guard
        return
    guards = app.state.unknown_path_guards = {prefix: guard}

    async def unknown(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        for start, path_guard in guards.items():
            if path.startswith(start) and CALLER not in request.scope:
                try:
                    await path_guard.caller(request)
                except StarletteHTTPException as denied:
                    return await http_exception_handler(request, denied)
                break
        return await http_exception_handler(request, exc)

    app.add_exception_handler(status.HTTP_404_NOT_FOUND, unknown)
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, unknown)
