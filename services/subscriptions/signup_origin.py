"""Which sites may post the sign-up (contract §11): the service's own pages, and the campaign
sites listed in ``UANET_SIGNUP_ORIGINS``; the same list answers CORS for JSON sign-ups.

The form carries no CSRF token (it creates nothing anyone is signed in to), so without this any
page could make its visitors' browsers sign strangers up. Browsers say where a POST comes from:
``Origin`` (every cross-site POST has one) and ``Sec-Fetch-Site``. A request with neither (curl,
a server calling the API) is no browser acting for a visitor, and passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers

from shared.settings import Settings, web_origin

# How long a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE = "600"


@dataclass(frozen=True)
class SignupOrigins:
    own: str
    allowed: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> SignupOrigins:
        return cls(web_origin(settings.public_url), settings.signup_origin_set)

    def refuses(self, headers: Headers, served_at: str = "") -> bool:
        """True for a sign-up a browser sends from a site that may not post it. ``served_at``:
        the origin the request was addressed to (its Host), also our own (the page opened at
        http://127.0.0.1:8002 while UANET_PUBLIC_URL names localhost)."""
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site", "").strip().lower()
        if origin is not None and origin.strip().lower() == "null":
            # Our pages send Referrer-Policy: no-referrer, so Chromium posts their own form
            # with "Origin: null" beside "Sec-Fetch-Site: same-origin". Any other "null" (a
            # sandboxed frame, a data: page or a file elsewhere) is no site we know.
            return fetch_site != "same-origin"
        if origin is not None:
            sent = web_origin(origin)
            ours = (self.own, web_origin(served_at))
            return not sent or (sent not in ours and sent not in self.allowed)
        return fetch_site == "cross-site"

    def cors(self, headers: Headers) -> dict[str, str]:
        """CORS headers for a listed campaign site's browser; none for anyone else."""
        origin = web_origin(headers.get("origin") or "")
        if origin and origin in self.allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {"Vary": "Origin"}

    def preflight(self, headers: Headers) -> dict[str, str] | None:
        """The answer to a CORS preflight: its headers, or None to refuse it."""
        allowed = self.cors(headers)
        if "Access-Control-Allow-Origin" not in allowed:
            return None
        return {
            **allowed,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type, Accept, Accept-Language",
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        }
