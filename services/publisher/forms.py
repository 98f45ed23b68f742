"""The compose form: a draft as HTML form fields, and back, validated by the API's own schema.

Field names are flat so the form works without JavaScript: ``targets-0-name``,
``content-fr-subject``, ``audience_countries`` (comma separated). Validation errors come back keyed
by those same names, to be shown next to the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from services.publisher.models import UrgentAction
from services.publisher.schemas import UrgentActionCreate

TARGET_FIELDS = ("name", "title", "address", "email", "salutation")
CONTENT_FIELDS = ("subject", "summary", "body", "sms", "model_letter")
MAX_TARGETS = 100
MAX_LANGUAGES = 30
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_LIST_SPLIT = re.compile(r"[,;\s]+")


def _split_list(raw: str) -> list[str]:
    return [item for item in _LIST_SPLIT.split(raw) if item]


def _text(form: FormData, name: str, limit: int = 25_000) -> str:
    value = form.get(name)
    # A file upload where text was expected is treated as empty, never as an error page.
    return value[:limit] if isinstance(value, str) else ""


@dataclass
class DraftForm:
    title: str = ""
    country: str = ""
    themes: str = ""
    urgency: str = "urgent"
    channels: list[str] = field(default_factory=lambda: ["email"])
    deadline: str = ""
    default_language: str = "en"
    audience_countries: str = ""
    audience_themes: str = ""
    audience_languages: str = ""
    targets: list[dict[str, str]] = field(
        default_factory=lambda: [dict.fromkeys(TARGET_FIELDS, "")]
    )
    content: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"en": dict.fromkeys(CONTENT_FIELDS, "")}
    )

    # ---- in ---------------------------------------------------------------------------------

    @classmethod
    def from_form(cls, form: FormData) -> DraftForm:
        draft = cls(
            title=_text(form, "title", 1000),
            country=_text(form, "country", 100),
            themes=_text(form, "themes", 2000),
            urgency=_text(form, "urgency", 20),
            channels=[c for c in form.getlist("channels") if isinstance(c, str)][:5],
            deadline=_text(form, "deadline", 40),
            default_language=_text(form, "default_language", 20),
            audience_countries=_text(form, "audience_countries", 2000),
            audience_themes=_text(form, "audience_themes", 2000),
            audience_languages=_text(form, "audience_languages", 2000),
        )
        count = min(_int(_text(form, "target_count", 10)), MAX_TARGETS)
        draft.targets = [
            {name: _text(form, f"targets-{i}-{name}", 2000) for name in TARGET_FIELDS}
            for i in range(count)
        ]
        languages = [
            lang
            for lang in dict.fromkeys(v for v in form.getlist("languages") if isinstance(v, str))
            if _LANGUAGE.match(lang)
        ][:MAX_LANGUAGES]
        draft.content = {
            lang: {name: _text(form, f"content-{lang}-{name}") for name in CONTENT_FIELDS}
            for lang in languages
        }
        return draft

    @classmethod
    def from_action(cls, action: UrgentAction) -> DraftForm:
        return cls(
            title=action.title,
            country=action.country,
            themes=", ".join(action.themes),
            urgency=action.urgency,
            channels=list(action.channels),
            deadline=action.deadline.isoformat() if action.deadline else "",
            default_language=action.default_language,
            audience_countries=", ".join(action.audience.get("countries", [])),
            audience_themes=", ".join(action.audience.get("themes", [])),
            audience_languages=", ".join(action.audience.get("languages", [])),
            targets=[{name: t.get(name) or "" for name in TARGET_FIELDS} for t in action.targets],
            content={
                lang: {name: text.get(name) or "" for name in CONTENT_FIELDS}
                for lang, text in action.content.items()
            },
        )

    # ---- the buttons that change the form's shape (no JavaScript needed) ---------------------

    def apply(self, operation: str, new_language: str) -> str | None:
        """Add or remove a target row or a language tab; returns a message if refused."""
        if operation == "add_target":
            if len(self.targets) >= MAX_TARGETS:
                return f"at most {MAX_TARGETS} targets"
            self.targets.append(dict.fromkeys(TARGET_FIELDS, ""))
        elif operation.startswith("remove_target:"):
            index = _int(operation.partition(":")[2], default=-1)
            if 0 <= index < len(self.targets):
                del self.targets[index]
        elif operation == "add_language":
            code = new_language.strip().lower()
            if not _LANGUAGE.match(code):
                return "a language is a two-letter code, e.g. fr"
            if len(self.content) >= MAX_LANGUAGES:
                return f"at most {MAX_LANGUAGES} languages"
            self.content.setdefault(code, dict.fromkeys(CONTENT_FIELDS, ""))
        elif operation.startswith("remove_language:"):
            code = operation.partition(":")[2]
            if code in self.content and len(self.content) > 1:
                del self.content[code]
        return None

    # ---- out ---------------------------------------------------------------------------------

    def payload(self) -> dict[str, Any]:
        """What the API would take as a JSON body."""

        def optional(value: str) -> str | None:
            return value.strip() or None

        return {
            "title": self.title,
            "country": self.country,
            "themes": _split_list(self.themes),
            "urgency": self.urgency,
            "channels": self.channels,
            "deadline": self.deadline.strip() or None,
            "default_language": self.default_language,
            "audience": {
                "countries": _split_list(self.audience_countries),
                "themes": _split_list(self.audience_themes),
                "languages": _split_list(self.audience_languages),
            },
            "targets": [
                {
                    "name": t["name"],
                    **{k: optional(t[k]) for k in TARGET_FIELDS if k != "name"},
                }
                for t in self.targets
                if any(v.strip() for v in t.values())  # an untouched empty row is not a target
            ],
            "content": self.content,
        }

    def validate(self) -> tuple[UrgentActionCreate | None, dict[str, str]]:
        """The validated action, or the errors keyed by form field name."""
        try:
            return UrgentActionCreate.model_validate(self.payload()), {}
        except ValidationError as exc:
            return None, form_errors(exc, self)


def _int(raw: str, default: int = 0) -> int:
    try:
        return max(int(raw), default)
    except ValueError:
        return default


def _field_name(loc: tuple[int | str, ...], draft: DraftForm) -> str:
    head = str(loc[0]) if loc else "form"
    if head == "audience" and len(loc) > 1:
        return f"audience_{loc[1]}"
    if head == "targets" and len(loc) > 2:
        # Index among submitted non-empty rows: map back to the row on the page.
        filled = [i for i, t in enumerate(draft.targets) if any(v.strip() for v in t.values())]
        position = int(loc[1]) if isinstance(loc[1], int) else 0
        row = filled[position] if position < len(filled) else position
        return f"targets-{row}-{loc[2]}"
    if head == "content" and len(loc) > 2:
        return f"content-{loc[1]}-{loc[2]}"
    if head == "content" and len(loc) == 2:
        return f"content-{loc[1]}"
    return head


def form_errors(exc: ValidationError, draft: DraftForm) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        name = _field_name(tuple(err.get("loc", ())), draft)
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        errors.setdefault(name, message)
    return errors
