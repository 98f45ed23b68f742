"""``/api/v1/webhooks`` in-process: what it takes and refuses, the secret shown once and stored
sealed, the audit log; and the wire format checked against the ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.publisher.models import AuditEntry
from services.publisher.webhooks.models import WebhookEndpoint, WebhookEvent
from services.publisher.webhooks.standard import (
    EVENT_TYPES,
    event_body,
    new_secret,
    signed_headers,
    verify,
)
from shared.sealing import unseal
from tests.conftest import SECRET
from tests.publisher.conftest import Api


def test_our_signature_is_the_specifications_and_the_package_verifies_it() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 24
    now = datetime.now(UTC)
    body = event_body("action.closed", now, {"outcome": "released", "note": "é"}).encode()
    headers = signed_headers(secret, "msg_1", body, now)
    # By hand, from the specification: v1, base64 HMAC-SHA256 of id.timestamp.body.
    key = base64.b64decode(secret[6:])
    expected = base64.b64encode(
        hmac.new(
            key, b"msg_1." + headers["webhook-timestamp"].encode() + b"." + body, hashlib.sha256
        ).digest()
    ).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert Webhook(secret).verify(body, headers)["data"]["note"] == "é"
    verify(secret, body, headers)
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), body, headers)
    with pytest.raises(WebhookVerificationError):
        verify(secret, body + b" ", headers)
    parsed = json.loads(body)
    assert set(parsed) == {"type", "timestamp", "data"} and parsed["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://crm.example.org/hooks", "events": ["action.published"]}, "url"),
        ({"url": "ftp://crm.example.org/", "events": ["action.published"]}, "url"),
        ({"url": "https://user:pw@crm.example.org/", "events": ["action.published"]}, "url"),
        ({"url": "https://crm.example.org/\r\nX: y", "events": ["action.published"]}, "url"),
        ({"url": "https://crm.example.org/", "events": ["action.deleted"]}, "events"),
        ({"url": "https://crm.example.org/", "events": []}, "events"),
        ({"url": "https://crm.example.org/", "events": "action.published"}, "events"),
        ({"events": ["action.published"]}, "url"),
    ],
)
async def test_bad_endpoints_are_422_naming_the_field(
    sqlite_api: Api, body: dict[str, object], field: str
) -> None:
    response = await sqlite_api.client.post(
        "/api/v1/webhooks", json=body, headers=sqlite_api.auth("admin")
    )
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json())


async def test_an_endpoint_is_added_listed_and_removed_with_its_secret_shown_once(
    api: Api,
) -> None:
    admin = api.auth("admin")
    for url in ("https://crm.example.org/hooks", "http://127.0.0.1:9/h", "http://[::1]:9/h"):
        added = await api.client.post(
            "/api/v1/webhooks",
            json={"url": url, "events": ["response.recorded", "action.published"]},
            headers=admin,
        )
        assert added.status_code == 201, added.text
    created = added.json()
    secret = created["secret"]
    listed = await api.client.get("/api/v1/webhooks", headers=admin)
    assert listed.status_code == 200
    assert secret not in listed.text and "secret" not in listed.text
    assert [e["url"] for e in listed.json()["items"]][-1] == "http://[::1]:9/h"
    async with api.app.state.runtime.sessionmaker() as session:
        stored = await session.get(WebhookEndpoint, __import__("uuid").UUID(created["id"]))
        assert stored is not None and secret not in stored.secret_sealed
        assert unseal(SECRET, stored.secret_sealed) == secret
    removed = await api.client.delete(f"/api/v1/webhooks/{created['id']}", headers=admin)
    assert removed.status_code == 204
    again = await api.client.delete(f"/api/v1/webhooks/{created['id']}", headers=admin)
    assert again.status_code == 404
    assert (
        await api.client.get("/api/v1/webhooks/not-an-id/deliveries", headers=admin)
    ).status_code == 404
    async with api.app.state.runtime.sessionmaker() as session:
        logged = (await session.execute(select(AuditEntry.event))).scalars().all()
    assert logged.count("webhook.added") == 3 and logged.count("webhook.removed") == 1


async def test_an_event_is_recorded_with_the_change_only_for_endpoints_that_want_it(
    api: Api,
) -> None:
    admin = api.auth("admin")
    draft = await api.create()
    await api.publish(draft["id"])  # no endpoint yet: nothing kept
    async with api.app.state.runtime.sessionmaker() as session:
        assert (await session.execute(select(WebhookEvent))).first() is None
    await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://a.example.org/", "events": ["action.closed"]},
        headers=admin,
    )
    await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://b.example.org/", "events": list(EVENT_TYPES)},
        headers=admin,
    )
    second = await api.publish((await api.create())["id"])
    async with api.app.state.runtime.sessionmaker() as session:
        kept = (await session.execute(select(WebhookEvent))).scalars().all()
    assert [e.type for e in kept] == ["action.published"]
    assert json.loads(kept[0].body or "")["data"] == second
    deliveries = await api.client.get("/api/v1/webhooks", headers=admin)
    wanting = [e for e in deliveries.json()["items"] if "action.published" in e["events"]]
    listed = await api.client.get(f"/api/v1/webhooks/{wanting[0]['id']}/deliveries", headers=admin)
    assert [d["state"] for d in listed.json()["items"]] == ["pending"]
