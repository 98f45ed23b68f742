"""What a subscriber will get, rendered by the code the dispatcher sends with (``rendering``),
so the preview cannot drift from the real thing: the email (HTML and text parts) and the SMS
with its size in segments.

Only the inputs are built here: the action as the dispatcher sees it, and a sample recipient whose
links are as long as real ones (an SMS's length depends on its link).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

from rendering.renderer import RecipientFill, Renderer, UrgentActionText
from rendering.segments import sms_size
from services.publisher.models import UrgentAction
from shared.db import utcnow
from shared.events import ActionContent, Target
from shared.settings import Settings
from shared.tokens import LinkSigner

SAMPLE_NAME = "Ana"
SAMPLE_ADDRESS = "ana@example.invalid"
# A realistic subscriptions row id and subscriber uuid, so the links have their real length.
_SAMPLE_RECIPIENT_ID = 1_234_567
_SAMPLE_SUBSCRIBER = "3f2b8c1e-5d4a-4e9b-8c7d-2a1b0c9d8e7f"


@dataclass(frozen=True)
class SmsPreview:
    text: str
    encoding: str
    units: int
    segments: int


@dataclass(frozen=True)
class LanguagePreview:
    language: str
    subject: str
    html: str
    text: str
    sms: SmsPreview | None


def action_text(action: UrgentAction) -> UrgentActionText:
    """The action as the dispatcher receives it in ``ActionPublished``."""
    return UrgentActionText(
        reference=action.reference,
        default_language=action.default_language,
        content={lang: ActionContent.model_validate(c) for lang, c in action.content.items()},
        targets=[Target.model_validate(t) for t in action.targets],
        deadline=action.deadline,
    )


def sample_links(settings: Settings) -> dict[str, str]:
    # Signed with a throwaway key: these links are shown, never followed.
    signer = LinkSigner("preview-only")
    base = settings.public_url
    return {
        "act_url": f"{base}/act/{signer.sign('act', [_SAMPLE_RECIPIENT_ID])}",
        "unsubscribe_url": f"{base}/unsubscribe/"
        + signer.sign("unsubscribe", {"s": _SAMPLE_SUBSCRIBER, "c": "email"}),
        "preferences_url": f"{base}/preferences/" + signer.sign("preferences", _SAMPLE_SUBSCRIBER),
    }


def sms_preview(text: str) -> SmsPreview:
    size = sms_size(text)
    return SmsPreview(text=text, encoding=size.encoding, units=size.units, segments=size.segments)


def preview_action(action: UrgentAction, settings: Settings) -> list[LanguagePreview]:
    """One preview per language of the action, its default language first."""
    renderer = Renderer(mail_from=settings.mail_from)
    text = action_text(action)
    links = sample_links(settings)
    languages = sorted(text.content, key=lambda lang: (lang != action.default_language, lang))
    previews = []
    for language in languages:
        prepared = renderer.alert_email(text, language, has_act=True, has_preferences=True)
        raw = prepared.build(
            RecipientFill(
                to=SAMPLE_ADDRESS, greeting=renderer.greeting(language, SAMPLE_NAME), **links
            ),
            now=utcnow(),
            message_id=f"<preview-{language}@{renderer.message_id_domain}>",
        )
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        html_part = message.get_body(preferencelist=("html",))
        text_part = message.get_body(preferencelist=("plain",))
        sms = (
            sms_preview(renderer.alert_sms(text, language, links["act_url"]))
            if "sms" in action.channels
            else None
        )
        previews.append(
            LanguagePreview(
                language=language,
                subject=str(message["Subject"]),
                html=str(html_part.get_content()) if html_part is not None else "",
                text=str(text_part.get_content()) if text_part is not None else "",
                sms=sms,
            )
        )
    return previews
