"""The weekly performance report by email, with its charts attached.

Alertmanager's email receiver carries text only; the report's equity and drawdown charts go
in a mail of their own, sent straight to the SMTP relay. The caller passes the relay's settings
(``Settings.smtp``) and the password it read; nothing here reads the environment.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Sequence


class MailError(RuntimeError):
    """The relay refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str = ""
    password: str | None = None
    starttls: bool = True
    timeout: float = 30.0


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "image"
    subtype: str = "png"


def build_message(relay: Relay, subject: str, body: str, attachments: Sequence[Attachment] = ()) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = relay.sender
    msg["To"] = ", ".join(relay.recipients)
    msg.set_content(body)
    for a in attachments:
        msg.add_attachment(a.content, maintype=a.maintype, subtype=a.subtype, filename=a.filename)
    return msg


def send(relay: Relay, subject: str, body: str, attachments: Sequence[Attachment] = ()) -> EmailMessage:
    """Send one mail; MailError (naming the relay, never the password) when it is not accepted."""
    if not relay.host or not relay.sender or not relay.recipients:
        raise MailError(
            "no SMTP relay configured: set AUTOTRADER_SMTP_HOST, AUTOTRADER_SMTP_FROM and AUTOTRADER_REPORT_EMAIL_TO"
        )
    msg = build_message(relay, subject, body, attachments)
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
            if relay.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if relay.username:
                smtp.login(relay.username, relay.password or "")
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(
            f"SMTP relay {relay.host}:{relay.port} did not take the mail: {type(exc).__name__}: {exc}"
        ) from exc
    return msg


__all__ = ["Attachment", "MailError", "Relay", "build_message", "send"]
