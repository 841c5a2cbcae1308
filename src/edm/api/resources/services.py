"""`/api/services`: the sending services, as `edm service` manages them.

Secrets (options whose key names a key, password, secret or token, as `edm service list`
masks them) are write-only: every answer shows them as `***`, and `***` sent back for a
stored secret keeps it, so a client may PATCH with the options it read. There is no
DELETE: services.py has no delete (sub-tasks and send attempts keep naming a service);
`disable` stops one for good.

A service is addressed by its name in the path, so a name given here cannot hold `/` (a
`%2F` is decoded before routing) nor be `.` or `..` (clients fold them away). Such names
made with the CLI are listed, but cannot be read or changed one by one here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from edm import services as services_mod
from edm.api.access import Caller
from edm.api.errors import ERROR_RESPONSES, ApiError
from edm.cli.common import SECRET_WORDS, masked
from edm.db.models import Service
from edm.providers.base import ProviderError
from edm.validation import ADDRESS_LENGTH, INT32_MAX, MAX_INTERVAL_SECONDS, NAME_LENGTH

router = APIRouter(prefix="/api", tags=["services"])
ERRORS = ERROR_RESPONSES
MASK = "***"
# How the domain's messages name a value (after the CLI's options), the words an API
# client knows it by, and the field of the request that holds it.
CLI_WORDS = (
    ("--daily-quota", "daily_quota", "daily_quota"),
    ("--interval", "interval", "interval"),
    ("--reason", "reason", "reason"),
    ("--for", "for_seconds", "for_seconds"),
    ("--to", "to", "to"),
    ("an --option key", "an options key", "options"),
    ("--option", "options", "options"),
    ("service name", "name", "name"),
)

# The keys of edm.providers.registry.PROVIDERS, as in `edm service add --provider`; a
# test checks that they agree.
ProviderName = Literal["sandbox", "smtp", "engagelab"]


def json_number(value: object) -> object:
    """Only a JSON number is a number: pydantic would read `true` as 1 and `"9"` as 9."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# Each bound before `json_number`: after it, they would leave the OpenAPI schema.
Interval = Annotated[
    float,
    Field(ge=0, le=MAX_INTERVAL_SECONDS, allow_inf_nan=False),
    BeforeValidator(json_number),
]
Quota = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(json_number)]
FreezeSeconds = Annotated[
    float,
    Field(gt=0, le=services_mod.MAX_FREEZE_SECONDS, allow_inf_nan=False),
    BeforeValidator(json_number),
]
Options = Annotated[
    dict[str, str],
    Field(max_length=100, description="the provider's options; `***` keeps a stored secret"),
]


class Closed(BaseModel):
    """A request body naming a field it does not know is refused, not half-applied."""

    model_config = ConfigDict(extra="forbid")


class ServiceOut(BaseModel):
    id: int
    name: str
    provider: str
    interval: float = Field(description="seconds between two sends; 0: no pace")
    daily_quota: int | None = Field(description="sends per UTC day; null: no limit")
    quota_used_today: int
    enabled: bool
    frozen: bool
    frozen_reason: str | None
    frozen_at: float | None = Field(description="since when, epoch seconds")
    frozen_until: float | None = Field(description="when the repair loop unfreezes it")
    last_error: str | None
    workers_alive: int = Field(description="running workers with a recent heartbeat")
    options: dict[str, str] = Field(description="secrets shown as `***`")


class ServiceIn(Closed):
    name: str = Field(min_length=1, max_length=NAME_LENGTH)
    provider: ProviderName
    interval: Interval = Field(description="seconds between two sends; 0: no pace")
    daily_quota: Quota | None = Field(None, description="sends per UTC day; null: no limit")
    options: Options = Field(default_factory=dict)


class ServicePatch(Closed):
    interval: Interval | None = Field(None, description="seconds between two sends")
    daily_quota: Quota | None = Field(None, description="sends per UTC day")
    options: Options | None = Field(None, description="merged into the stored options")


class MessageTo(Closed):
    to: str = Field(min_length=1, max_length=ADDRESS_LENGTH, json_schema_extra={"format": "email"})


class ProviderAnswer(BaseModel):
    """What the provider answered: a refusal is an answer too (200), as `edm service test`
    shows it; only a request this server cannot run is an error."""

    accepted: bool
    provider_message_id: str | None = None
    duplicate: bool = Field(False, description="the provider had seen this message")
    error_class: str | None = Field(None, description="transient, recipient, request, ...")
    error_code: str | None = None
    message: str


class FreezeIn(Closed):
    reason: str | None = Field(None, max_length=10_000)
    for_seconds: FreezeSeconds | None = Field(
        None, description="unfrozen by the repair loop after this long; default: never"
    )


def refused(exc: Exception) -> ApiError:
    """The answer for a domain refusal: its message, naming the request's field."""
    if isinstance(exc, OSError):  # the sandbox creating its outbox file
        return ApiError(400, "invalid_input", f"option outbox: {exc.strerror or exc}", "options")
    message = str(exc)
    if message.startswith("unknown service"):
        return ApiError(404, "not_found", message)
    if message.startswith("a service named"):
        return ApiError(409, "conflict", message, "name")
    if message.startswith("unknown provider"):
        return ApiError(400, "invalid_input", message, "provider")
    for word, words, field in CLI_WORDS:
        if word in message:
            return ApiError(400, "invalid_input", message.replace(word, words), field)
    return ApiError(400, "invalid_input", message, "options")


def addressable(name: str) -> str:
    """`name` if `/api/services/{name}` can reach it; else a 400."""
    if "/" in name or name.strip() in (".", ".."):
        raise ApiError(
            400,
            "invalid_input",
            "name is part of the service's URL: it cannot hold '/' or be '.' or '..'",
            "name",
        )
    return name


def is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def kept_secrets(given: dict[str, str], stored: dict[str, str]) -> dict[str, str]:
    """`given` without the secrets sent back as `***`: the stored values stay."""
    for key in given:
        try:
            services_mod.check_remote_options({key: given[key]})
        except services_mod.ServiceInputError as exc:
            raise ApiError(400, "invalid_input", str(exc), f"options.{key}") from None
    for key, value in given.items():
        if value == MASK and is_secret(key) and key not in stored:
            raise ApiError(
                400,
                "invalid_input",
                f"{MASK} keeps a stored secret, and {key} has none: give its value",
                f"options.{key}",
            )
    return {k: v for k, v in given.items() if not (v == MASK and is_secret(k))}


def views(engine: Engine) -> list[tuple[ServiceOut, dict[str, str]]]:
    """Every service, and its options unmasked (for the server's eyes only)."""
    listed = services_mod.list_services(engine)
    # ServiceView has no frozen_at (the CLI shows no "since"): read beside it.
    with engine.connect() as conn:
        since = dict(conn.execute(select(Service.id, Service.frozen_at)).all())
    return [(_out(view, since.get(view.id)), view.options) for view in listed]


def _out(view: services_mod.ServiceView, frozen_at: float | None) -> ServiceOut:
    return ServiceOut(
        id=view.id,
        name=view.name,
        provider=view.provider,
        interval=view.interval_seconds,
        daily_quota=view.daily_quota,
        quota_used_today=view.quota_used_today,
        enabled=view.enabled,
        frozen=view.frozen,
        frozen_reason=view.frozen_reason,
        frozen_at=frozen_at if view.frozen else None,
        frozen_until=view.frozen_until,
        last_error=view.last_error,
        workers_alive=view.workers_alive,
        options={str(k): str(v) for k, v in masked(view.options).items()},
    )


def found(engine: Engine, name: str) -> tuple[ServiceOut, dict[str, str]]:
    """Service `name` (and its stored options), or 404."""
    for view, options in views(engine):
        if view.name == name:
            return view, options
    raise ApiError(404, "not_found", f"unknown service {name!r}")


async def changed(request: Request, name: str, change: Callable[[Engine], None]) -> ServiceOut:
    """Service `name` after `change`: 404 before anything when it does not exist."""
    engine = request.app.state.engine

    def run() -> ServiceOut:
        found(engine, name)
        try:
            change(engine)
        except (ValueError, OSError) as exc:
            raise refused(exc) from None
        return found(engine, name)[0]

    return await run_in_threadpool(run)


@router.get("/services", response_model=list[ServiceOut], responses=ERRORS)
async def get_services(request: Request, _: Caller) -> list[ServiceOut]:
    listed = await run_in_threadpool(views, request.app.state.engine)
    return [view for view, _options in listed]


@router.post("/services", response_model=ServiceOut, status_code=201, responses=ERRORS)
async def post_service(request: Request, body: ServiceIn, _: Caller) -> ServiceOut:
    """Add a service; running workers pick it up within seconds."""
    engine = request.app.state.engine
    addressable(body.name)
    options = kept_secrets(body.options, {})

    def run() -> ServiceOut:
        try:
            services_mod.add_service(
                engine, body.name, body.provider, body.interval, body.daily_quota, options
            )
        except IntegrityError:  # added at the same moment by someone else
            message = f"a service named {body.name.strip()!r} already exists"
            raise ApiError(409, "conflict", message, "name") from None
        except (ValueError, OSError) as exc:
            raise refused(exc) from None
        return found(engine, body.name.strip())[0]

    return await run_in_threadpool(run)


@router.get("/services/{name}", response_model=ServiceOut, responses=ERRORS)
async def get_service(request: Request, name: str, _: Caller) -> ServiceOut:
    view, _options = await run_in_threadpool(found, request.app.state.engine, name)
    return view


@router.patch("/services/{name}", response_model=ServiceOut, responses=ERRORS)
async def patch_service(request: Request, name: str, body: ServicePatch, _: Caller) -> ServiceOut:
    """Change pace, quota or options (merged); workers follow without a restart."""

    def change(engine: Engine) -> None:
        options = kept_secrets(body.options or {}, found(engine, name)[1])
        services_mod.update_service(
            engine, name, interval=body.interval, daily_quota=body.daily_quota, options=options
        )

    return await changed(request, name, change)


@router.post("/services/{name}/test", response_model=ProviderAnswer, responses=ERRORS)
async def send_test(request: Request, name: str, body: MessageTo, _: Caller) -> ProviderAnswer:
    """Send one real message through the service, outside any task, and tell its answer."""
    engine, settings = request.app.state.engine, request.app.state.settings

    def run() -> ProviderAnswer:
        found(engine, name)
        try:
            result = services_mod.send_test_message(engine, name, body.to, settings)
        except ProviderError as exc:
            return ProviderAnswer(
                accepted=False, error_class=exc.error_class, error_code=exc.code, message=str(exc)
            )
        except services_mod.ServiceInputError as exc:
            if str(exc).startswith("--to"):
                raise refused(exc) from None
            raise ApiError(409, "cannot_start", str(exc)) from None
        except OSError as exc:  # the sandbox's outbox cannot be written
            raise ApiError(409, "cannot_start", f"service {name} cannot send: {exc}") from None
        note = " (a repeat of an earlier message)" if result.duplicate else ""
        return ProviderAnswer(
            accepted=True,
            provider_message_id=result.provider_message_id,
            duplicate=result.duplicate,
            message=f"{name} accepted the message{note}",
        )

    return await run_in_threadpool(run)


@router.post("/services/{name}/freeze", response_model=ServiceOut, responses=ERRORS)
async def freeze_service(
    request: Request,
    name: str,
    _: Caller,
    body: Annotated[FreezeIn | None, Body()] = None,
) -> ServiceOut:
    """Stop sending through the service; its work goes to the others."""
    given = body or FreezeIn()
    return await changed(
        request,
        name,
        lambda engine: services_mod.set_frozen(
            engine, name, True, given.reason, for_seconds=given.for_seconds
        ),
    )


@router.post("/services/{name}/unfreeze", response_model=ServiceOut, responses=ERRORS)
async def unfreeze_service(request: Request, name: str, _: Caller) -> ServiceOut:
    return await changed(request, name, lambda engine: services_mod.set_frozen(engine, name, False))


@router.post("/services/{name}/enable", response_model=ServiceOut, responses=ERRORS)
async def enable_service(request: Request, name: str, _: Caller) -> ServiceOut:
    return await changed(request, name, lambda engine: services_mod.set_enabled(engine, name, True))


@router.post("/services/{name}/disable", response_model=ServiceOut, responses=ERRORS)
async def disable_service(request: Request, name: str, _: Caller) -> ServiceOut:
    """Stop using the service, without the alarm of a freeze."""
    return await changed(
        request, name, lambda engine: services_mod.set_enabled(engine, name, False)
    )
