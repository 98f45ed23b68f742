"""Steps the letter tests share on a running stack: a confirmed subscriber, a published action
with targets, its act link from the alert email, staff sign-in to the console, the counts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.stack import Stack
from tests.support import eventually

SUBSCRIBER = "ana@example.net"
JUDGE, MINISTER = "judiciary@example.org", "minister@example.org"
STAFF, PASSWORD = "staff@example.org", "correct horse battery staple"
TARGETS = [
    {"name": "Head of the Judiciary", "email": JUDGE, "salutation": "Dear Head of the Judiciary"},
    {"name": "Minister of Justice", "email": MINISTER},
    {"name": "Prison governor", "address": "Evin Prison, Tehran"},  # by post only
]
ACTION: dict[str, Any] = {
    "title": "Journalist held incommunicado at risk of torture",
    "country": "IR",
    "themes": ["torture"],
    "urgency": "urgent",
    "channels": ["email"],
    "deadline": "2099-12-20",
    "default_language": "en",
    "audience": {"countries": [], "themes": [], "languages": []},
    "targets": TARGETS,
    "content": {
        "en": {
            "subject": "Urgent Action: journalist at risk of torture",
            "summary": "A journalist is held incommunicado.",
            "body": "Full case text.",
            "model_letter": "I am writing to urge you to release the journalist.",
        }
    },
}


@dataclass
class Published:
    action_id: str
    act_url: str
    coordinator: str


async def publish_to_a_subscriber(client: httpx.AsyncClient, stack: Stack) -> Published:
    """Ana signs up and confirms; staff publish the action; her alert's act link."""
    signed_up = await client.post(
        stack.url("subscriptions") + "/api/v1/subscribers",
        json={"email": SUBSCRIBER, "name": "Ana Lima", "country": "GB", "channels": ["email"]},
    )
    assert signed_up.status_code == 202, signed_up.text
    [confirmation] = await eventually(lambda: stack.smtp.to(SUBSCRIBER), what="confirmation")
    confirm = re.search(r"https?://\S+/confirm/\S+", confirmation.part("plain"))
    assert confirm
    assert (await client.post(confirm.group(0))).status_code == 200

    staff = {"Authorization": f"Bearer {stack.token('staff', 'letters-staff')}"}
    created = await client.post(
        stack.url("publisher") + "/api/v1/actions", json=ACTION, headers=staff
    )
    assert created.status_code == 201, created.text
    action_id = created.json()["id"]
    published = await client.post(
        f"{stack.url('publisher')}/api/v1/actions/{action_id}/publish", headers=staff
    )
    assert published.status_code == 200, published.text

    alerts = await eventually(
        lambda: [m for m in stack.smtp.to(SUBSCRIBER) if "/act/" in m.part("plain")],
        what="the alert",
    )
    act = re.search(r"https?://\S+/act/[^\s\"'<>]+", alerts[0].part("plain"))
    assert act
    return Published(action_id, act.group(0), stack.token("coordinator", "letters-coordinator"))


async def stats(client: httpx.AsyncClient, stack: Stack, published: Published) -> Any:
    response = await client.get(
        f"{stack.url('publisher')}/api/v1/actions/{published.action_id}/stats",
        headers={"Authorization": f"Bearer {published.coordinator}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def create_staff_user(stack: Stack) -> None:
    made = stack.cli("users", "create", "--email", STAFF, "--role", "staff", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
