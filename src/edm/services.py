"""Managing sending services: add, list, freeze, unfreeze, enable, disable."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from edm import validation
from edm.config import Settings
from edm.db.models import Service, WorkerHeartbeat
from edm.db.notify import notify
from edm.messages import tracking_headers
from edm.providers.base import (
    OptionError,
    OutgoingMessage,
    Provider,
    SendResult,
    UnknownOutcomeError,
)
from edm.providers.registry import make_provider, provider_class
from edm.scheduler.pace import utc_day


class ServiceInputError(ValueError):
    """Bad input for a service command; the message names what is wrong."""


@dataclass(frozen=True)
class ServiceView:
    id: int
    name: str
    provider: str
    interval_seconds: float
    daily_quota: int | None
    quota_used_today: int
    enabled: bool
    frozen: bool
    frozen_reason: str | None
    frozen_until: float | None
    last_error: str | None
    workers_alive: int
    options: dict


def parse_options(pairs: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ServiceInputError(f"--option must be KEY=VALUE, not {pair!r}")
        options[key.strip()] = value
    return validation.options(options, error=ServiceInputError)


def add_service(
    engine: Engine,
    name: str,
    provider: str,
    interval: float,
    daily_quota: int | None = None,
    options: dict[str, str] | None = None,
) -> int:
    name = validation.label(name, "service name", error=ServiceInputError)
    interval = validation.interval_seconds(interval, "--interval", error=ServiceInputError)
    daily_quota = _quota(daily_quota)
    options = validation.options(options or {}, error=ServiceInputError)
    try:
        provider_class(provider)(name, options)  # validates the options
    except OptionError as exc:
        raise ServiceInputError(str(exc)) from None
    with Session(engine) as session, session.begin():
        if session.scalar(select(Service.id).where(Service.name == name)):
            raise ServiceInputError(f"a service named {name!r} already exists")
        service = Service(
            name=name,
            provider=provider,
            options=options,
            interval_seconds=interval,
            daily_quota=daily_quota,
            created_at=time.time(),
        )
        session.add(service)
        session.flush()
        notify(session.connection(), "services")
        return service.id


# Options naming a path on the server's disk (the sandbox's outbox): set from the command
# line only, so a web client (API or console) cannot make the server write where it likes.
LOCAL_ONLY_OPTIONS = ("outbox",)


def check_remote_options(options: dict[str, str]) -> None:
    """Refuse, for a change made over HTTP, an option only the command line may set."""
    for key in options:
        if key in LOCAL_ONLY_OPTIONS:
            raise ServiceInputError(
                f"option {key} names a file on the server: set it with `edm service`"
            )


def _quota(daily_quota: int | None) -> int | None:
    if daily_quota is None:
        return None
    return validation.int32(daily_quota, "--daily-quota", low=0, error=ServiceInputError)


def get_service(session: Session, name: str) -> Service:
    validation.db_text(name, "service name", error=ServiceInputError)
    service = session.scalar(select(Service).where(Service.name == name))
    if service is None:
        raise ServiceInputError(f"unknown service {name!r}")
    return service


def set_frozen(
    engine: Engine,
    name: str,
    frozen: bool,
    reason: str | None = None,
    for_seconds: float | None = None,
) -> None:
    """Freeze (for `for_seconds`, after which the repair loop unfreezes it; else until an
    operator does) or unfreeze service `name`."""
    if reason is not None:
        validation.db_text(reason, "--reason", error=ServiceInputError)
    if for_seconds is not None and not (0 < for_seconds <= MAX_FREEZE_SECONDS):
        raise ServiceInputError(
            f"--for must be more than 0 and at most {MAX_FREEZE_SECONDS // 86400} days"
        )
    now = time.time()
    with Session(engine) as session, session.begin():
        service = get_service(session, name)
        if not frozen and service.frozen:
            service.unfrozen_at = now  # its reputation is judged afresh from here
        service.frozen = frozen
        service.frozen_reason = (reason or "frozen by an operator") if frozen else None
        service.frozen_at = now if frozen else None
        service.frozen_until = now + for_seconds if frozen and for_seconds else None
        notify(session.connection(), "services")


MAX_FREEZE_SECONDS = 365 * 86400


def set_enabled(engine: Engine, name: str, enabled: bool) -> None:
    with Session(engine) as session, session.begin():
        get_service(session, name).enabled = enabled
        notify(session.connection(), "services")


def update_service(
    engine: Engine,
    name: str,
    *,
    interval: float | None = None,
    daily_quota: int | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Change a service; running workers see pace and quota at their next claim and are
    restarted (within `supervisor_seconds`) when the provider options change."""
    if interval is not None:
        interval = validation.interval_seconds(interval, "--interval", error=ServiceInputError)
    daily_quota = _quota(daily_quota)
    options = validation.options(options or {}, error=ServiceInputError)
    with Session(engine) as session, session.begin():
        service = get_service(session, name)
        if interval is not None:
            service.interval_seconds = interval
        if daily_quota is not None:
            service.daily_quota = daily_quota
        if options:
            merged = {**service.options, **options}
            try:
                provider_class(service.provider)(name, merged)
            except OptionError as exc:
                raise ServiceInputError(str(exc)) from None
            service.options = merged
            service.config_version += 1
        notify(session.connection(), "services")


def list_services(engine: Engine, heartbeat_max_age: float = 30.0) -> list[ServiceView]:
    now = time.time()
    with Session(engine) as session:
        beats: dict[int, int] = {}
        for beat in session.scalars(select(WorkerHeartbeat)):
            if beat.state == "running" and now - beat.beat_at <= heartbeat_max_age:
                beats[beat.service_id] = beats.get(beat.service_id, 0) + 1
        return [
            ServiceView(
                id=s.id,
                name=s.name,
                provider=s.provider,
                interval_seconds=s.interval_seconds,
                daily_quota=s.daily_quota,
                quota_used_today=s.quota_used if s.quota_day == utc_day(now) else 0,
                enabled=s.enabled,
                frozen=s.frozen,
                frozen_reason=s.frozen_reason,
                frozen_until=s.frozen_until,
                last_error=s.last_error,
                workers_alive=beats.get(s.id, 0),
                options=s.options,
            )
            for s in session.scalars(select(Service).order_by(Service.id))
        ]


def send_test_message(engine: Engine, name: str, to: str, settings: Settings) -> SendResult:
    """Send one real message through a service, outside any task, and return the answer.

    Raises the provider's classified error, so an operator sees exactly what a campaign
    would meet (bad credentials, refused sender, ...) before starting one.
    """
    from edm.contacts import valid_email  # email-validator: only this command needs it

    if valid_email(to) is None:
        raise ServiceInputError(f"--to must be an email address, not {to!r}")
    with Session(engine) as session:
        service = get_service(session, name)
        provider_name, options = service.provider, dict(service.options)
    try:
        provider = make_provider(provider_name, name, options)
    except OptionError as exc:
        raise ServiceInputError(f"service {name} cannot start: {exc}") from None
    key = f"test-{uuid.uuid4().hex}"
    sender = options.get("from")
    message = OutgoingMessage(
        sub_task_id=0,
        task_id=0,
        idempotency_key=key,
        to_email=to.strip(),
        to_name=None,
        from_addr=sender,
        subject=f"edm test message from service {name}",
        text=f"This message checks that the sending service {name} works.\n",
        html=None,
        headers=tracking_headers(
            idempotency_key=key,
            from_addr=sender,
            sub_task_id=0,
            task_id=0,
            unsubscribe=settings.public_url,
        ),
    )

    return send_one(provider, message, settings.lease_seconds)


def send_one(provider: Provider, message: OutgoingMessage, timeout: float) -> SendResult:
    """One provider call outside any task (a test message), under the worker's time limit:
    no answer in time is an unknown outcome, as it would be for a campaign."""

    async def send() -> SendResult:
        try:
            return await asyncio.wait_for(provider.send(message), timeout)
        except TimeoutError:
            raise UnknownOutcomeError(f"no answer within {timeout:g}s") from None
        finally:
            await provider.close()

    return asyncio.run(send())


WEBHOOK_VERIFY_ON = ("true", "1", "yes")


def engagelab_webhook_keys(engine: Engine) -> list[str]:
    """The keys of every EngageLab service that verifies its webhooks; empty: none does.

    `webhook_verify` defaults to on (as in the provider), so a service with a
    `webhook_key` and no `webhook_verify` verifies. A verifying service without a key
    (possible only for rows older than the option check) contributes an empty key,
    which signs nothing: verification fails closed rather than open.
    """
    with Session(engine) as session:
        rows = session.scalars(select(Service.options).where(Service.provider == "engagelab"))
        options_list = [row if isinstance(row, dict) else {} for row in rows]
    keys = []
    for options in options_list:
        key = str(options.get("webhook_key") or "")
        verify = options.get("webhook_verify")
        if bool(key) if verify is None else str(verify).strip().lower() in WEBHOOK_VERIFY_ON:
            keys.append(key)
    return keys
