"""The OSDI 1.1 shapes of contract §8, written from the contract's table and the specification
(https://opensupporter.github.io/osdi-docs/: people, advocacy_campaigns, outreaches, the entry
point, collections), not from what uanet answers. Strict: a field of the wrong type, a status
outside the specification's words, or a field nobody named fails.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

HAL_JSON = "application/hal+json"


def _iso_utc(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value} has no time zone"
    return value


def _uanet_id(value: str) -> str:
    assert value.startswith("uanet:") and len(value) > len("uanet:"), value
    return value


def _url(value: str) -> str:
    assert value.startswith(("http://", "https://")), value
    return value


Date = Annotated[str, AfterValidator(_iso_utc)]
Identifier = Annotated[str, AfterValidator(_uanet_id)]
Url = Annotated[str, AfterValidator(_url)]
AddressStatus = Literal["subscribed", "unsubscribed", "bouncing"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Link(Strict):
    href: Url
    title: str | None = None
    templated: bool | None = None


class Curie(Strict):
    name: str
    href: str
    templated: bool


class SelfLinks(Strict):
    model_config = ConfigDict(extra="allow", strict=True)
    self_: Link = Field(alias="self")


class ResourceShape(Strict):
    identifiers: list[Identifier] = Field(min_length=1)
    origin_system: Literal["uanet"]
    created_date: Date
    modified_date: Date


# ---- people ----------------------------------------------------------------------------------


class EmailAddress(Strict):
    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    primary: bool
    status: AddressStatus
    address_type: str | None = None


class PhoneNumber(Strict):
    number: str = Field(pattern=r"^\+[1-9]\d{6,14}$")  # E.164
    primary: bool
    sms_capable: bool
    status: AddressStatus
    number_type: str | None = None


class PostalAddress(Strict):
    country: str = Field(pattern=r"^[A-Z]{2}$")  # ISO 3166-1 alpha-2
    primary: bool | None = None


class PersonCustomFields(Strict):
    uanet_themes: str
    uanet_frequency: Literal["immediate", "daily_digest"]


class Person(ResourceShape):
    given_name: str | None = None
    family_name: str | None = None
    email_addresses: list[EmailAddress]
    phone_numbers: list[PhoneNumber]
    postal_addresses: list[PostalAddress]
    languages_spoken: list[Annotated[str, Field(pattern=r"^[a-z]{2}$")]]
    custom_fields: PersonCustomFields
    links: SelfLinks = Field(alias="_links")


# ---- advocacy campaigns and outreaches ---------------------------------------------------------


class Target(Strict):
    title: str | None = None
    organization: str | None = None
    given_name: str | None = None
    family_name: str | None = None


class CampaignLinks(SelfLinks):
    model_config = ConfigDict(extra="forbid", strict=True)
    outreaches: Link = Field(alias="osdi:outreaches")
    curies: list[Curie] | None = None


class AdvocacyCampaign(ResourceShape):
    title: str = Field(min_length=1)
    description: str
    targets: list[Target]
    total_outreaches: int = Field(ge=0)
    links: CampaignLinks = Field(alias="_links")


class OutreachLinks(Strict):
    # §8 names only osdi:person (absent once the writer is erased); uanet serves no outreach on
    # its own, so a self link is optional.
    self_: Link | None = Field(None, alias="self")
    person: Link | None = Field(None, alias="osdi:person")
    campaign: Link | None = Field(None, alias="osdi:advocacy_campaign")


class Outreach(ResourceShape):
    type: Literal["email"]
    subject: str
    targets: list[Target]
    links: OutreachLinks = Field(alias="_links")


# ---- entry point and collections ---------------------------------------------------------------


class EntryLinks(SelfLinks):
    model_config = ConfigDict(extra="forbid", strict=True)
    people: Link = Field(alias="osdi:people")
    campaigns: Link = Field(alias="osdi:advocacy_campaigns")
    curies: list[Curie] | None = None


class EntryPoint(Strict):
    motd: str | None = None
    vendor_name: str | None = None
    product_name: str | None = None
    osdi_version: Literal["1.1"] | None = None
    max_pagesize: int | None = None
    namespace: str | None = None
    links: EntryLinks = Field(alias="_links")


class PageLinks(Strict):
    self_: Link = Field(alias="self")
    next: Link | None = None
    prev: Link | None = None


class Page(Strict):
    total_pages: int = Field(ge=0)
    total_records: int = Field(ge=0)
    page: int = Field(ge=1)
    per_page: int = Field(ge=1, le=100)
    links: PageLinks = Field(alias="_links")


class PeopleEmbedded(Strict):
    items: list[Person] = Field(alias="osdi:people")


class PeoplePage(Page):
    embedded: PeopleEmbedded = Field(alias="_embedded")


class CampaignsEmbedded(Strict):
    items: list[AdvocacyCampaign] = Field(alias="osdi:advocacy_campaigns")


class CampaignsPage(Page):
    embedded: CampaignsEmbedded = Field(alias="_embedded")


class OutreachesEmbedded(Strict):
    items: list[Outreach] = Field(alias="osdi:outreaches")


class OutreachesPage(Page):
    embedded: OutreachesEmbedded = Field(alias="_embedded")


def checked(shape: type[BaseModel], response: Any) -> dict[str, Any]:
    """The answer's body, after checking its status, content type and shape."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(HAL_JSON), response.headers
    body: dict[str, Any] = response.json()
    shape.model_validate(body)
    if isinstance(body.get("_embedded"), dict):
        # The counts agree with the page (the last one may be short; past the end, empty).
        (items,) = body["_embedded"].values()
        assert len(items) <= body["per_page"]
        assert body["total_pages"] == -(-body["total_records"] // body["per_page"])
        assert ("next" in body["_links"]) == (body["page"] < body["total_pages"])
    return body
