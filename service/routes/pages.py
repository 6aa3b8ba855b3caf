"""The web dashboard: HTML page shells under ``/`` and ``/ui/`` that render the JSON API in the browser.

The pages carry no data: the script (native ES modules under ``service/web/static/js/``, entry ``main.js``, no
build step) fetches it from the same endpoints CI uses (``GET /jobs``, ``GET /jobs/{id}/events``, ``GET /rules``...),
sending the API token the user typed (kept in sessionStorage) when the API asks for one. Every asset is served from
the package; the Content-Security-Policy allows nothing else.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import Response
from starlette.types import Scope

from converter import __version__

WEB = Path(__file__).resolve().parents[1] / "web"
templates = Jinja2Templates(directory=WEB / "templates")
router = APIRouter(include_in_schema=False)

CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


# browsers run a module script only when it is served as JavaScript; the system's table may say otherwise
mimetypes.add_type("text/javascript", ".js")


class _Assets(StaticFiles):
    """The dashboard's static files. Scripts are revalidated on every load (a 304 while unchanged): the ``?v=``
    on ``main.js`` does not reach the modules it imports, and a page must never run modules of two versions."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path).endswith(".js"):
            response.headers["Cache-Control"] = "no-cache"
        return response


def _page(request: Request, template: str, title: str, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    response = templates.TemplateResponse(
        request, template, {"title": title, "base": base, "version": __version__, **context}
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("/")
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "Jobs", page="jobs")


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page(request, "job.html", f"Job {job_id[:8]}", page="job", job_id=job_id)


@router.get("/ui/new")
def submit_page(request: Request) -> HTMLResponse:
    return _page(request, "new.html", "New conversion", page="new")


@router.get("/ui/rules")
def rules_page(request: Request) -> HTMLResponse:
    return _page(request, "rules.html", "Rules", page="rules")


@router.get("/ui/rules/{model_type}")
def model_type_page(request: Request, model_type: str) -> HTMLResponse:
    return _page(request, "rule.html", f"{model_type} rules", page="rule", model_type=model_type)


def install(app: FastAPI) -> None:
    """Add the pages and their static assets (``/ui/static``) to the app."""
    app.include_router(router)
    app.mount("/ui/static", _Assets(directory=WEB / "static"), name="ui-static")
