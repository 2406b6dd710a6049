"""Texts for people about consents, in the request's language (svclib.i18n: `ru` by default, `en`).

Statuses and error codes stay language-neutral; only these explanations follow the language. A
FAILED consent keeps its language-neutral `error_code` and the bank's technical answer
(`error_message`, e.g. "503: bank answered HTTP 503"): the sentence is made when it is shown, with
that answer after it for support.
"""

from __future__ import annotations

from svclib.i18n import pick

# Why a consent could not be created (consents.error_code).
BANK_UNAVAILABLE = "BANK_UNAVAILABLE"  # no answer, 5xx, rate limited: asking again may work
BANK_REFUSED = "BANK_REFUSED"  # the bank answered no (4xx)
BANK_AUTH_FAILED = "BANK_AUTH_FAILED"  # the app's own credentials were refused
NO_DEBTOR_ACCOUNT = "NO_DEBTOR_ACCOUNT"  # no account to pay from at the bank (payment consents)
ACCOUNT_CONSENT_NOT_APPROVED = "ACCOUNT_CONSENT_NOT_APPROVED"  # payment consents need it approved

_FAILED = {
    BANK_UNAVAILABLE: {
        "ru": "Банк сейчас недоступен, согласие не создано; запросите его ещё раз",
        "en": "The bank is unavailable right now and the consent was not created; ask for it again",
    },
    BANK_REFUSED: {"ru": "Банк отказал в создании согласия", "en": "The bank refused to create the consent"},
    BANK_AUTH_FAILED: {
        "ru": "Банк не принял учётные данные приложения, согласие не создано",
        "en": "The bank did not accept the app's credentials; the consent was not created",
    },
    NO_DEBTOR_ACCOUNT: {
        "ru": "В этом банке нет счёта, с которого можно платить",
        "en": "There is no account to pay from at this bank",
    },
    ACCOUNT_CONSENT_NOT_APPROVED: {
        "ru": "Согласие на платежи требует одобренного согласия на доступ к счетам",
        "en": "A payment consent needs the account consent approved first",
    },
}
_GENERIC_FAILURE = {"ru": "Не удалось создать согласие в банке", "en": "The consent could not be created at the bank"}

_BY_STATUS = {
    "REJECTED": {"ru": "Согласие отклонено в банке", "en": "The bank rejected the consent"},
    "REVOKED": {"ru": "Согласие отозвано", "en": "The consent was revoked"},
    "EXPIRED": {"ru": "Срок действия согласия истёк", "en": "The consent has expired"},
    "DEFERRED": {
        "ru": "Согласие на платежи будет запрошено, как только банк одобрит согласие на доступ к счетам",
        "en": "The payment consent will be requested once the account consent is approved",
    },
}

_ACCOUNT_CONSENT_FIRST = {
    "ru": "Сначала нужно согласие на доступ к счетам в этом банке",
    "en": "The account consent at this bank is needed first",
}


def consent_message(status: str, error_code: str | None = None, error_detail: str | None = None) -> str | None:
    """Why a consent is not usable (rejected, revoked, expired, failed) or what it waits for (deferred);
    None when it is approved or simply waits at the bank or for the customer."""
    if status == "FAILED":
        text = pick(_FAILED.get(error_code or "", _GENERIC_FAILURE))
        return f"{text} ({error_detail})" if error_detail else text
    texts = _BY_STATUS.get(status)
    return pick(texts) if texts else None


def account_consent_first() -> str:
    """A product or payment consent asked for at a bank without a live or waiting account consent."""
    return pick(_ACCOUNT_CONSENT_FIRST)
