"""The playground: one page at `/` with its static files under `/static/` (no build step).

The page's upload types are filled in here from the list the upload route takes (files.py), so
the file picker offers what the server reads.

These stay open when API keys are required: the page asks for a key and sends it itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ragtune.serving.routes.files import UPLOAD_SUFFIXES

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


def render_index() -> str:
    """index.html with the upload types filled in from the list the upload route takes."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return page.replace("{{upload_types}}", " ".join(UPLOAD_SUFFIXES)).replace(
        "{{upload_accept}}", ",".join(UPLOAD_SUFFIXES)
    )


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(render_index(), headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the page and its files."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
