"""How many decoded pixels the web page holds at once, across all requests.

A 47 KB PNG can decode to 7000 x 7000 pixels: about 150 MB as RGB, and several times that
while it is converted, explained (a float32 heatmap on its own grid) and drawn. Eight such
uploads at once took the server from 1.3 GB to 5.2 GB. Each upload therefore reserves its
pixel count, read from the file's header before anything is decoded, from one budget
(`app.max_pixels_in_flight`); it waits for room at most `app.busy_wait_s` seconds (then 503,
"busy"), and one that could never fit is refused at once (413). `release_memory` hands
the freed pages back to the system after a large image, so the server's size falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import io
import warnings
from collections.abc import AsyncIterator

from PIL import Image

LARGE_PIXELS = 4_000_000  # after an image this large, freed memory is returned to the system


class BudgetRefused(Exception):
    """An upload the budget cannot take: the HTTP status and the one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header (nothing is decoded); None when there is no
    readable header (decoding then fails at once and reports why, at no cost)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:  # any unreadable header: the decoder names the problem
        return None
    return int(width), int(height)


class PixelBudget:
    """At most `total` decoded pixels held at once by all requests (asyncio, one event loop).

    `in_use` is what is reserved now, `peak` the most ever reserved at once."""

    def __init__(self, total: int, wait_s: float):
        self.total = int(total)
        self.wait_s = float(wait_s)
        self.in_use = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int, size: str) -> AsyncIterator[None]:
        """Hold `pixels` of the budget inside the block; `size` (e.g. "7000 x 7000 pixels")
        is what the refusal quotes. Raises `BudgetRefused` (413 never fits, 503 busy)."""
        if pixels > self.total:
            raise BudgetRefused(
                413,
                f"too large for this server: {size}, more than it decodes at once "
                f"(app.max_pixels_in_flight = {self.total})",
            )
        await self._acquire(pixels)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()

    async def _acquire(self, pixels: int) -> None:
        async with self._changed:
            try:
                if self.in_use + pixels > self.total:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.in_use + pixels <= self.total),
                        timeout=self.wait_s,
                    )
            except TimeoutError:
                raise BudgetRefused(
                    503,
                    "busy: other large images are being analysed; try again in a minute "
                    f"(app.max_pixels_in_flight = {self.total})",
                ) from None
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)


def release_memory() -> bool:
    """Return freed heap pages to the system (glibc `malloc_trim`); False where unavailable.

    Memory freed by one of the server's many threads can otherwise stay in that thread's
    allocator arena, and the server stays at its peak size after a burst of large uploads."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return False
    return True
