"""The viewer's files, served as they are at "/" beside the API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

__all__ = ["static_dir", "viewer_routes"]

logger = logging.getLogger("streamer.server")


def static_dir() -> Path | None:
    """Where the viewer's files are: inside the package once installed, else
    at the top of the repository."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "static", here.parent / "static"):
        if (candidate / "index.html").is_file():
            return candidate
    return None


_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def viewer_routes() -> list[BaseRoute]:
    """A GET route for each of the viewer's files, and "/" for its page.

    Routes rather than a catch-all mount at "/", which would answer every
    unknown API path and every wrong method with its own 404 or 405.
    """
    directory = static_dir()
    if directory is None:
        logger.warning("viewer files not found; serving the API only")
        return []

    routes: list[BaseRoute] = []
    for path in sorted(directory.rglob("*")):
        media_type = _MEDIA_TYPES.get(path.suffix)
        if not path.is_file() or media_type is None:
            continue
        url = "/" + path.relative_to(directory).as_posix()
        serve = _file(path, media_type)
        routes.append(Route(url, serve, methods=["GET"], name=f"viewer:{url}"))
        if url == "/index.html":
            routes.append(Route("/", serve, methods=["GET"], name="viewer:/"))
    return routes


def _file(path: Path, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve_file(request: Request) -> Response:
        # Pages and modules change with each release; a browser revalidates.
        return FileResponse(
            path, media_type=media_type, headers={"Cache-Control": "no-cache"}
        )

    return serve_file
