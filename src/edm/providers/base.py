"""What every provider offers the scheduler, and the error classes it raises.

Providers know nothing of the database: they get a rendered message with its
idempotency key and answer with the provider's message id, or raise one of the
classified errors below so that the scheduler can decide what happens next.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class OutgoingMessage:
    sub_task_id: int
    task_id: int
    idempotency_key: str
    to_email: str
    to_name: str | None
    from_addr: str | None
    subject: str
    html: str | None
    text: str | None
    # Message-ID, X-EDM-Subtask, X-EDM-Task, List-Unsubscribe, List-Unsubscribe-Post:
    # built once by edm.messages so every provider carries the same ones.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str | None
    duplicate: bool = False  # the provider recognised the key and did not send again


class ProviderError(Exception):
    """A failed send. `error_class` tells the scheduler what the failure means."""

    error_class: ClassVar[str] = "transient"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class TransientError(ProviderError):
    """Surely not sent (refused, throttled, 5xx before acceptance): retry later, anywhere."""

    error_class = "transient"


class RecipientError(ProviderError):
    """This address cannot receive mail: the sub-task fails and the contact is marked."""

    error_class = "recipient"


class RequestError(ProviderError):
    """The provider refused this message itself (content, format): the sub-task fails,
    the contact is left alone."""

    error_class = "request"


class ServiceError(ProviderError):
    """The account itself is unusable (credentials, suspension): freeze the service."""

    error_class = "service"


class UnknownOutcomeError(ProviderError):
    """The request may have been accepted (timeout after sending): never resend blindly."""

    error_class = "unknown"


class OptionError(ValueError):
    """A service was configured with options its provider cannot use."""


class Provider(abc.ABC):
    name: ClassVar[str]
    # How long the provider recognises a repeated idempotency key, in seconds;
    # None: it does not, float('inf'): for ever.
    idempotency_window: ClassVar[float | None] = None
    # How many sends one provider object can carry at once (an SMTP connection: one).
    # The worker queues the rest before their time limit starts, so waiting for a turn
    # is never mistaken for a provider that hangs.
    max_concurrent_sends: ClassVar[int | None] = None

    # Whether the worker should tell this provider where the installation receives
    # webhooks (the sandbox posts its simulated events there); may be set per object.
    wants_webhook: bool = False

    def __init__(self, service_name: str, options: dict[str, str]) -> None:
        self.service_name = service_name
        self.options = dict(options)

    def set_webhook(self, url: str, token: str) -> None:  # noqa: B027 - optional hook
        """The generic webhook endpoint and its token; called once, before any send, when
        `wants_webhook` is true, since providers cannot read them from the database."""

    @abc.abstractmethod
    async def send(self, message: OutgoingMessage) -> SendResult:
        """Hand one message to the provider."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
