"""Files over HTTP, for the API and the console alike: an upload spooled to disk as it
arrives, and a CSV written to a spool and streamed out. Memory stays flat either way."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

CHUNK_CHARS = 64 * 1024


class UploadTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is over {limit} bytes")


async def spool_upload(request: Request, path: Path, max_bytes: int) -> int:
    """The request's body written to `path`; its size. Stops at `max_bytes`."""
    size = 0
    with path.open("wb") as upload:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(max_bytes)
            upload.write(chunk)
    return size


async def csv_download(write: Callable[[TextIO], Any], filename: str) -> StreamingResponse:
    """`write`'s CSV as an attachment. It runs to the end before the first byte is sent,
    so its errors (a ValueError) are raised here, not halfway through a download."""
    spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115 - _chunks closes it
    try:
        await run_in_threadpool(write, spool)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return StreamingResponse(
        _chunks(spool),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _chunks(spool: Any) -> Iterator[str]:
    with spool:
        while chunk := spool.read(CHUNK_CHARS):
            yield chunk
