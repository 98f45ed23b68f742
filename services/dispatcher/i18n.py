"""The dispatcher's own words, in every language it writes (staff write the rest).

English is the fallback for a language with no entry here; the urgent action's own text follows
the recipient's language, else the action's default language.
"""

from __future__ import annotations

from typing import Final

FALLBACK: Final = "en"
RTL_LANGUAGES: Final = frozenset({"ar", "fa", "he", "ur"})

STRINGS: Final[dict[str, dict[str, str]]] = {
    "en": {
        "stop": "Reply STOP to opt out",
        "greeting": "Dear {name},",
        "greeting_anonymous": "Dear supporter,",
        "take_action": "Take action now",
        "act_before": "Please act before {date}.",
        "reference": "Reference",
        "targets": "Who to write to",
        "unsubscribe": "Unsubscribe",
        "preferences": "Manage your preferences",
        "why": "You receive this because you signed up for Urgent Action alerts.",
        "confirm_subject": "Please confirm your Urgent Action alerts",
        "confirm_intro": "Thank you for signing up for Urgent Action alerts. "
        "Please confirm your email address to start receiving them.",
        "confirm_button": "Confirm my subscription",
        "confirm_ignore": "If you did not sign up, ignore this email: you will not hear from us.",
        "confirm_sms": "Reply YES to confirm your Urgent Action alerts. Reply STOP to opt out",
    },
    "fr": {
        "stop": "Répondez STOP pour vous désabonner",
        "greeting": "Bonjour {name},",
        "greeting_anonymous": "Bonjour,",
        "take_action": "Agissez maintenant",
        "act_before": "Merci d'agir avant le {date}.",
        "reference": "Référence",
        "targets": "À qui écrire",
        "unsubscribe": "Se désabonner",
        "preferences": "Gérer vos préférences",
        "why": "Vous recevez ce message car vous êtes inscrit·e aux Actions urgentes.",
        "confirm_subject": "Merci de confirmer votre inscription aux Actions urgentes",
        "confirm_intro": "Merci de votre inscription aux Actions urgentes. "
        "Confirmez votre adresse email pour commencer à les recevoir.",
        "confirm_button": "Confirmer mon inscription",
        "confirm_ignore": "Si vous ne vous êtes pas inscrit·e, ignorez ce message.",
        "confirm_sms": "Répondez YES pour confirmer vos alertes Actions urgentes. "
        "Répondez STOP pour vous désabonner",
    },
    "es": {
        "stop": "Responde STOP para darte de baja",
        "greeting": "Hola, {name}:",
        "greeting_anonymous": "Hola:",
        "take_action": "Actúa ahora",
        "act_before": "Por favor, actúa antes del {date}.",
        "reference": "Referencia",
        "targets": "A quién escribir",
        "unsubscribe": "Darse de baja",
        "preferences": "Gestionar tus preferencias",
        "why": "Recibes este mensaje porque te suscribiste a las Acciones Urgentes.",
        "confirm_subject": "Confirma tu suscripción a las Acciones Urgentes",
        "confirm_intro": "Gracias por suscribirte a las Acciones Urgentes. "
        "Confirma tu dirección de correo para empezar a recibirlas.",
        "confirm_button": "Confirmar mi suscripción",
        "confirm_ignore": "Si no te suscribiste, ignora este mensaje.",
        "confirm_sms": "Responde YES para confirmar tus alertas de Acciones Urgentes. "
        "Responde STOP para darte de baja",
    },
    "ar": {
        "stop": "أرسل STOP لإلغاء الاشتراك",
        "greeting": "عزيزي/عزيزتي {name}،",
        "greeting_anonymous": "عزيزي المؤيد،",
        "take_action": "تحرّك الآن",
        "act_before": "يرجى التحرك قبل {date}.",
        "reference": "المرجع",
        "targets": "إلى من تكتب",
        "unsubscribe": "إلغاء الاشتراك",
        "preferences": "إدارة تفضيلاتك",
        "why": "تتلقى هذه الرسالة لأنك اشتركت في تنبيهات التحركات العاجلة.",
        "confirm_subject": "يرجى تأكيد اشتراكك في تنبيهات التحركات العاجلة",
        "confirm_intro": "شكرًا لاشتراكك في تنبيهات التحركات العاجلة. "
        "يرجى تأكيد بريدك الإلكتروني لتبدأ في تلقيها.",
        "confirm_button": "تأكيد اشتراكي",
        "confirm_ignore": "إذا لم تشترك، تجاهل هذه الرسالة.",
        "confirm_sms": "أرسل YES لتأكيد تنبيهات التحركات العاجلة. أرسل STOP لإلغاء الاشتراك",
    },
}


def strings(language: str) -> dict[str, str]:
    return STRINGS.get(language) or STRINGS.get(language.split("-")[0]) or STRINGS[FALLBACK]


def text_direction(language: str) -> str:
    return "rtl" if language.split("-")[0] in RTL_LANGUAGES else "ltr"
