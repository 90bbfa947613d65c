"""The live dashboard: one page (`static/index.html`) and its script and styles under `/ui/`, served by the hub
with no build step and nothing fetched from elsewhere. The page signs in with a token pasted into it and then
talks to the same REST API and hub-wide event stream as any client."""

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only the hub's own script, styles and API: content an agent shared can never run as code on the page.
_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=_HEADERS)


def routes() -> list[BaseRoute]:
    return [Route("/", page), Mount("/ui", app=StaticFiles(directory=STATIC_DIR), name="ui")]
