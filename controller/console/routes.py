"""The console's routes (DESIGN §9) on a Powertools resolver of their own: HTML answers and HTML
errors (the API's are JSON), forms that post and redirect, the same services and authorization as
the API. :func:`handle` serves an API Gateway event whose path is under ``/console``.

Reads need a signed-in caller outside trusted mode (§7); every post proves its page sent it (CSRF,
:mod:`controller.console.security`) and names its caller, or writes nothing.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any
from urllib.parse import parse_qs, quote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

from controller.console import browser_login, callers, rendering, security, views
from controller.core.access import Caller
from controller.core.errors import Forbidden, NotFound, ServiceError, Unavailable, Unprocessable
from controller.wiring import dependencies

logger = logging.getLogger("flux_control.console")
console = APIGatewayRestResolver()
HTML = "text/html; charset=utf-8"
#: What a successful post says on the page it redirects to (fixed texts: a query string names one,
#: so that nobody can make the console say anything else).
DONE = {
    "approved": "Approved: the run is scheduled.",
    "rejected": "Rejected: the run will not run.",
    "cancelled": "Cancelled.",
    "retried": "Retried: the run comes back as its next attempt.",
}


class _Page:
    """One request as the console sees it: its cookies, caller and CSRF token."""

    def __init__(self) -> None:
        event = console.current_event
        self.headers = {k.lower(): v for k, v in (event.headers or {}).items()}
        self.cookies = security.cookies_of(self.headers)
        self.trusted = dependencies().trust_body_user
        context = event.raw_event.get("requestContext") or {}
        self.caller: Caller | None = callers.console_caller(context, self.cookies, trusted=self.trusted)
        self.csrf, self.new_csrf = security.csrf_token(self.cookies)
        self.root = console_root(event.raw_event)

    def html(self, template: str, title: str, /, http_status: int = 200, **context: Any) -> Response[str]:
        """The page, with the security headers and, on a first visit, the CSRF cookie."""
        done = (console.current_event.query_string_parameters or {}).get("done", "")
        body = rendering.render(
            template,
            title=title,
            caller=self.caller.name if self.caller else None,
            login_enabled=self.trusted or _browser_login() is not None,
            csrf_token=self.csrf,
            root=self.root,
            notice=context.pop("notice", DONE.get(done, "")),
            error=context.pop("error", ""),
            **context,
        )
        cookies = [self.cookie(security.CSRF_COOKIE, self.csrf)]
        return Response(
            status_code=http_status,
            content_type=HTML,
            body=body,
            headers=dict(security.SECURITY_HEADERS),
            cookies=cookies if self.new_csrf else [],
        )

    def refused(
        self, exc: ServiceError | security.CsrfRefused, template: str, title: str, context: dict[str, Any]
    ) -> Response[str]:
        """The page a refused post came from, again, with the refusal on it (and its status)."""
        if isinstance(exc, ServiceError):
            return self.html(template, title, http_status=exc.status, error=exc.message, **context)
        return self.html(template, title, http_status=403, error=str(exc), **context)

    def cookie(self, name: str, value: str, max_age: int | None = None) -> Any:
        """A console cookie for this console's path (Secure but in trusted mode: serve is plain HTTP)."""
        return security.console_cookie(name, value, secure=not self.trusted, path=self.root, max_age=max_age)

    def reader(self) -> None:
        """Refuse a read without a caller outside trusted mode (DESIGN §7): off to the browser login
        when the deployment has one, else a 403."""
        if self.caller is None and not self.trusted:
            if _browser_login() is not None:
                raise _SignInFirst(f"{self.root}/login{rendering.query(next=_console_path())}")
            raise Forbidden("sign in to see the console (your organisation's browser login)")

    def writer(self, form: dict[str, str]) -> Caller:
        """The caller of a post, after its CSRF proof; 403 without either."""
        security.check_csrf(self.cookies, form, self.headers)
        if self.caller is None:
            raise Forbidden("sign in first: a change needs an identified caller")
        return self.caller


class _SignInFirst(Exception):
    """A page asked for without a caller, where a browser login exists: the sign-in's URL."""


def _console_path() -> str:
    """The page asked for, as a path under /console (where a sign-in comes back to)."""
    event = console.current_event
    query_string = "&".join(f"{k}={v}" for k, v in (event.query_string_parameters or {}).items())
    return event.path + (f"?{query_string}" if query_string else "")


def console_root(event: dict[str, Any]) -> str:
    """The console's path as the browser sees it: ``/console``, behind an API stage
    ``/<stage>/console`` (API Gateway's ``requestContext.path`` keeps the stage, ``path`` does not)."""
    path = str(event.get("path") or "")
    seen = str((event.get("requestContext") or {}).get("path") or path)
    stage = seen[: -len(path)] if path and seen.endswith(path) else ""
    return f"{stage.rstrip('/')}/console"


def redirect(location: str, cookies: list[Any] | None = None) -> Response[str]:
    """A 303 to ``location`` (a path of this console, with its root)."""
    headers = {**security.SECURITY_HEADERS, "Location": location}
    return Response(status_code=303, content_type=HTML, body="", headers=headers, cookies=cookies or [])


def form() -> dict[str, str]:
    """The posted form's fields (the last value of each)."""
    body = console.current_event.decoded_body or ""
    return {name: values[-1] for name, values in parse_qs(body, keep_blank_values=True).items()}


def query(name: str) -> str:
    return (console.current_event.query_string_parameters or {}).get(name, "").strip()


# --- pages -------------------------------------------------------------------------------------------


@console.get("/console/")  # Powertools strips the slash: /console too
def home() -> Response[str]:
    page = _Page()
    page.reader()
    return page.html("home.html", "What needs you", **views.home(dependencies()))


@cache
def _browser_login() -> browser_login.BrowserLogin | None:
    """The deployment's browser login (the Cognito hosted UI), or None (serve, or none deployed)."""
    return browser_login.BrowserLogin.from_env()


@console.get("/console/login")
def login_form() -> Response[str]:
    """serve: the local form; in AWS: off to the hosted UI, back to ``/console/callback``."""
    page = _Page()
    if page.trusted:
        return page.html("login.html", "Sign in")
    login = _browser_login()
    if login is None:
        raise NotFound("this deployment has no browser login (ConsoleLogin=none)")
    try:
        url, pending = login.start(query("next") or browser_login.HOME)
    except browser_login.LoginFailed:
        url, pending = login.start()
    return redirect(url, [login.state_cookie(pending)])


@console.get("/console/callback")
def login_callback() -> Response[str]:
    """The hosted UI's redirect: the code exchanged for an ID token, verified, kept in a cookie."""
    login = _browser_login()
    if login is None:
        raise NotFound("this deployment has no browser login")
    if query("error"):
        return _error_page(
            403, "the sign-in was cancelled or refused; try again", cookies=login.cleared_cookies()[:1]
        )
    cookies = security.cookies_of({k.lower(): v for k, v in (console.current_event.headers or {}).items()})
    try:
        id_token, next_path = login.finish(
            query("code") or None, query("state") or None, cookies.get(browser_login.STATE_COOKIE)
        )
        callers.verified_caller(id_token)
    except (browser_login.LoginFailed, callers.InvalidLogin) as exc:
        return _error_page(403, f"sign-in failed: {exc}", cookies=login.cleared_cookies()[:1])
    return redirect(
        login.console_link(next_path), [login.cleared_cookies()[0], login.id_token_cookie(id_token)]
    )


@console.get("/console/logout")
def logout() -> Response[str]:
    page = _Page()
    if page.trusted:
        return redirect(f"{page.root}/login", [page.cookie(security.USER_COOKIE, "", max_age=0)])
    login = _browser_login()
    if login is None:
        raise NotFound("this deployment has no browser login")
    return redirect(login.logout_url(), login.cleared_cookies())


@console.post("/console/login")
def login() -> Response[str]:
    page = _Page()
    if not page.trusted:
        raise NotFound("this deployment signs in through its browser login")
    fields = form()
    security.check_csrf(page.cookies, fields, page.headers)
    user = fields.get("user", "").strip()
    if not user:
        return page.html("login.html", "Sign in", http_status=422, error="User: enter a name")
    return redirect(f"{page.root}/", [page.cookie(security.USER_COOKIE, quote(user, safe=""))])


@console.get("/console/approvals")
def approvals_page() -> Response[str]:
    page = _Page()
    page.reader()
    return page.html("approvals.html", "Approvals", **views.approvals(dependencies(), page.caller))


@console.post("/console/approvals/<approval_id>")
def decide(approval_id: str) -> Response[str]:
    from controller.services import approvals  # lazy, as the API's routes

    page = _Page()
    fields = form()
    try:
        caller = page.writer(fields)
        choice = fields.get("decision")
        if choice not in ("approve", "reject"):
            raise Unprocessable("decision: choose Approve or Reject")
        comment = fields.get("comment", "").strip() or None
        result = approvals.decide(dependencies(), _id(approval_id), caller, choice == "approve", comment)
    except (ServiceError, security.CsrfRefused) as exc:
        return page.refused(exc, "approvals.html", "Approvals", views.approvals(dependencies(), page.caller))
    done = "approved" if choice == "approve" else "rejected"
    return redirect(f"{page.root}/runs/{result['run']['id']}?done={done}")


@console.get("/console/runs")
def runs_page() -> Response[str]:
    page = _Page()
    page.reader()
    before = query("before")
    context = views.runs(
        dependencies(), query("table"), query("status"), query("key"), _id(before) if before else None
    )
    return page.html("runs.html", "Runs", **context)


@console.get("/console/runs/<run_id>")
def run_page(run_id: str) -> Response[str]:
    page = _Page()
    page.reader()
    context = views.run(dependencies(), _id(run_id), page.caller)
    return page.html("run.html", f"Run {run_id}", **context)


@console.post("/console/runs/<run_id>/<action>")
def run_action(run_id: str, action: str) -> Response[str]:
    from controller.services import run_actions  # lazy, as the API's routes

    page = _Page()
    fields = form()
    number = _id(run_id)
    reason = fields.get("reason", "").strip() or None
    try:
        caller = page.writer(fields)
        if action == "cancel":
            run_actions.cancel_run(dependencies(), number, reason, caller)
        elif action == "retry":
            run_actions.retry_run(dependencies(), number, reason, caller)
        else:
            raise NotFound(f"no action {action!r} on runs")
    except (ServiceError, security.CsrfRefused) as exc:
        return page.refused(exc, "run.html", f"Run {run_id}", views.run(dependencies(), number, page.caller))
    done = "cancelled" if action == "cancel" else "retried"
    return redirect(f"{page.root}/runs/{number}?done={done}")


@console.get("/console/tables")
def tables_page() -> Response[str]:
    page = _Page()
    page.reader()
    number = query("page")
    context = views.tables(dependencies(), query("q"), _id(number) if number else 1)
    return page.html("tables.html", "Tables", **context)


@console.get("/console/tables/<name>")
def table_page(name: str) -> Response[str]:
    page = _Page()
    page.reader()
    context = views.table(dependencies(), name, query("key"), page.root)
    answer = ""
    params = console.current_event.query_string_parameters or {}
    asked = {k.removeprefix("p_"): v for k, v in params.items() if k.startswith("p_")}
    if asked:
        try:
            answer = views.explain_key(dependencies(), name, asked)
        except ServiceError as exc:
            return page.refused(exc, "table.html", name, {**context, "asked": asked, "explanation": ""})
    return page.html("table.html", name, asked=asked, explanation=answer, **context)


@console.get("/console/executions")
def executions_page() -> Response[str]:
    page = _Page()
    page.reader()
    return page.html("executions.html", "Executions", **views.executions(dependencies(), query("table")))


@console.get("/console/static/<name>")
def static(name: str) -> Response[bytes]:
    found = rendering.static_asset(name)
    if found is None:
        raise NotFound(f"no asset {name!r}")
    body, media = found
    headers = {**security.SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(status_code=200, content_type=media, body=body, headers=headers)


# --- errors ------------------------------------------------------------------------------------------


@console.exception_handler(ServiceError)
def _problem(exc: ServiceError) -> Response[str]:
    return _error_page(exc.status, exc.message, retry=isinstance(exc, Unavailable))


@console.exception_handler(_SignInFirst)
def _sign_in_first(exc: _SignInFirst) -> Response[str]:
    return redirect(str(exc))


@console.exception_handler(security.CsrfRefused)
def _refused(exc: security.CsrfRefused) -> Response[str]:
    return _error_page(403, str(exc))


@console.not_found
def _not_found(exc: Exception) -> Response[str]:
    return _error_page(404, f"no console page {console.current_event.path}")


@console.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[str]:
    reference = console.current_event.request_context.request_id
    logger.exception("unexpected console error", extra={"reference": reference})
    return _error_page(500, f"internal error (reference {reference}); it was logged")


def _error_page(
    status: int, message: str, *, retry: bool = False, cookies: list[Any] | None = None
) -> Response[str]:
    """An error as a page of the console, never a stack trace."""
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 503: "Unavailable"}
    body = rendering.render(
        "error.html",
        title=titles.get(status, "Error"),
        caller=None,
        login_enabled=False,
        notice="",
        error=message,
        root=console_root(console.current_event.raw_event),
    )
    headers = dict(security.SECURITY_HEADERS)
    if retry:
        headers["Retry-After"] = "5"
    return Response(status_code=status, content_type=HTML, body=body, headers=headers, cookies=cookies or [])


def _id(value: str) -> int:
    """A run or approval id from a path: a positive integer, else 404."""
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise NotFound(f"no such id {value!r}")
    return int(value)


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Serve one console request."""
    answer: dict[str, Any] = console.resolve(event, context)
    return answer
