"""Provider names as they appear in `edm service add --provider`."""

from __future__ import annotations

from edm.providers.base import OptionError, Provider
from edm.providers.engagelab import EngageLabProvider
from edm.providers.sandbox import SandboxProvider
from edm.providers.smtp import SMTPProvider

PROVIDERS: dict[str, type[Provider]] = {
    SandboxProvider.name: SandboxProvider,
    SMTPProvider.name: SMTPProvider,
    EngageLabProvider.name: EngageLabProvider,
}


def provider_class(name: str) -> type[Provider]:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise OptionError(f"unknown provider {name!r} (known: {known})") from None


def make_provider(name: str, service_name: str, options: dict[str, str]) -> Provider:
    return provider_class(name)(service_name, options)
