"""The publisher's OSDI 1.1 resources, in the specification's own names: the API entry point
(https://opensupporter.github.io/osdi-docs/aep.html), advocacy campaigns
(…/advocacy_campaigns.html) and outreaches (…/outreaches.html).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.publisher.models import Outreach as OutreachRow
from services.publisher.models import UrgentAction
from shared.osdi import (
    CURIES,
    MAX_PER_PAGE,
    Collection,
    Link,
    Resource,
    identifier,
    when,
)

ROOT = "/osdi/v1"
CAMPAIGNS = f"{ROOT}/advocacy_campaigns"
PEOPLE = f"{ROOT}/people"  # on subscriptions, under UANET_PUBLIC_URL

# Words before a person's name that are not part of it (a target named "Dr Ana Silva").
HONORIFICS = frozenset(
    {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame", "h.e.", "he", "hon"}
)


class Target(BaseModel):
    """Whom an advocacy campaign writes to, as far as uanet knows: the office (``title``), and
    the person's ``given_name`` and ``family_name`` when the target names a person."""

    title: str | None = None
    organization: str | None = None
    given_name: str | None = None
    family_name: str | None = None


class AdvocacyCampaign(Resource):
    title: str
    description: str
    targets: list[Target]
    total_outreaches: int


class Outreach(Resource):
    type: Literal["email"] = "email"
    subject: str
    targets: list[Target]


class EntryPoint(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    motd: str
    vendor_name: str
    product_name: str
    osdi_version: Literal["1.1"] = "1.1"
    max_pagesize: int = MAX_PER_PAGE
    namespace: str = "uanet"
    links: dict[str, Any] = Field(alias="_links")


class CampaignsEmbedded(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    campaigns: list[AdvocacyCampaign] = Field(alias="osdi:advocacy_campaigns")


class CampaignsPage(Collection):
    embedded: CampaignsEmbedded = Field(alias="_embedded")


class OutreachesEmbedded(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    outreaches: list[Outreach] = Field(alias="osdi:outreaches")


class OutreachesPage(Collection):
    embedded: OutreachesEmbedded = Field(alias="_embedded")


def entry_point(publisher_url: str, subscriptions_url: str) -> EntryPoint:
    return EntryPoint(
        motd="uanet: urgent actions and the people who act on them",
        vendor_name="uanet",
        product_name="uanet",
        links={
            "self": Link(href=f"{publisher_url}{ROOT}/"),
            "osdi:advocacy_campaigns": Link(
                href=publisher_url + CAMPAIGNS, title="The published urgent actions"
            ),
            "osdi:people": Link(href=subscriptions_url + PEOPLE, title="The subscribers"),
            "curies": CURIES,
        },
    )


def target(stored: Mapping[str, Any]) -> Target:
    """An action's target as OSDI names it. A target whose name is its office ("Head of the
    Judiciary") has only a ``title``; one with a title besides its name names a person, whose
    last word is taken as the family name."""
    name = " ".join(str(stored.get("name") or "").split())
    title = " ".join(str(stored.get("title") or "").split()) or None
    if title is None or title.casefold() == name.casefold():
        return Target(title=title or name or None)
    words = [w for w in name.split() if w.casefold() not in HONORIFICS] or name.split()
    if len(words) < 2:
        return Target(title=title, family_name=words[0] if words else None)
    return Target(title=title, given_name=" ".join(words[:-1]), family_name=words[-1])


def campaign_url(publisher_url: str, action_id: uuid.UUID) -> str:
    return f"{publisher_url}{CAMPAIGNS}/{action_id}"


def advocacy_campaign(
    publisher_url: str, action: UrgentAction, outreaches: int, last_outreach_at: datetime | None
) -> AdvocacyCampaign:
    content = action.content.get(action.default_language) or next(iter(action.content.values()))
    modified = action.updated_at
    if last_outreach_at is not None and last_outreach_at > modified:
        modified = last_outreach_at
    url = campaign_url(publisher_url, action.id)
    return AdvocacyCampaign(
        identifiers=[identifier(action.id)],
        created_date=when(action.created_at),
        modified_date=when(modified),
        title=action.title,
        description=str(content.get("summary") or ""),
        targets=[target(t) for t in action.targets],
        total_outreaches=outreaches,
        links={"self": Link(href=url), "osdi:outreaches": Link(href=f"{url}/outreaches")},
    )


def subject(action: UrgentAction, language: str) -> str:
    """The letter's email subject: the action's, in the letter's language (as the dispatcher
    sends it), else in the action's default language, else its title."""
    for lang in (language, action.default_language):
        text = (action.content.get(lang) or {}).get("subject")
        if text:
            return str(text)
    return action.title


def outreach(
    publisher_url: str, subscriptions_url: str, action: UrgentAction, row: OutreachRow
) -> Outreach:
    links = {"osdi:advocacy_campaign": Link(href=campaign_url(publisher_url, action.id))}
    if row.subscriber_id is not None:
        links["osdi:person"] = Link(href=f"{subscriptions_url}{PEOPLE}/{row.subscriber_id}")
    return Outreach(
        identifiers=[identifier(row.letter_id)],
        created_date=when(row.created_at),
        modified_date=when(row.updated_at),
        subject=subject(action, row.language),
        targets=[target(t) for t in row.targets],
        links=links,
    )
