"""`edm audience count`, and the audience options every command that makes one shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from edm.cli.common import engine, handles_errors, out, print_json

if TYPE_CHECKING:
    from edm.audience.selection import Audience

app = typer.Typer(no_args_is_help=True, help="Audiences: who a task would send to.")

Lists = Annotated[
    str | None, typer.Option(help="comma-separated lists to send to; default: every contact")
]
Exclude = Annotated[
    str | None, typer.Option(help="comma-separated lists whose members are left out")
]
Where = Annotated[
    str | None,
    typer.Option(help='a condition on contact fields: city = "Paris" and plan != "free"'),
]


def audience_option(lists: str | None, exclude: str | None, where: str | None) -> Audience:
    """The audience of --lists, --exclude and --where; a bad condition is a ValueError that
    points at the spot."""
    from edm.audience.selection import Audience

    return Audience.of(_split(lists), _split(exclude), where)


def _split(names: str | None) -> list[str]:
    return [name.strip() for name in (names or "").split(",") if name.strip()]


@app.command("count")
@handles_errors
def audience_count(
    lists: Lists = None,
    exclude: Exclude = None,
    where: Where = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """How many contacts a task with this audience would send to, before creating it."""
    from edm.audience.selection import count_audience

    audience = audience_option(lists, exclude, where)
    counted = count_audience(engine(), audience)
    if as_json:
        print_json(
            {
                "lists": list(audience.lists),
                "exclude": list(audience.exclude),
                "where": audience.where,
                "receive": counted.receive,
                "suppressed": counted.suppressed,
            }
        )
        return
    out.print(
        f"{counted.receive:,} would receive it ({counted.suppressed:,} suppressed left out):"
        f" {audience.describe()}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
