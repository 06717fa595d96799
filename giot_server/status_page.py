"""The server's own status page: the federation's rounds as plots a person reads at a glance.

Read-only, one aiohttp application over ``<checkpoint-dir>/rounds.jsonl`` (``fl_server.history``,
written by the ServerApp in Flower's own process):

    /                     summary, plots, the latest rounds as a table (refreshes every 30 s)
    /plots/NAME.svg       participation, traffic, latency, loss, metrics, privacy
    /api/rounds           the rounds as JSON
    /healthz              "ok" (no login: for supervisors)

Plots are SVG rendered on the server by matplotlib (no pyplot, no browser-side code, nothing
fetched from elsewhere: it works offline), once per change of the file, in a worker thread.

It binds 127.0.0.1 by default. Any other address needs a password (HTTP Basic, compared in
constant time; the user name is not checked): ``check_binding`` refuses it otherwise, so the page
cannot end up on a LAN without a login by accident. Basic credentials travel in clear over plain
HTTP, so ``giot-server`` serves the page over TLS with its server certificate when it has one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import html
import io
import ipaddress
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from fl_server.history import FILE_NAME, History, read_history

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DEFAULT_PORT = 9094
REFRESH_S = 30
MAX_PLOTTED = 500  # rounds drawn; the API has them all
TABLE_ROWS = 12
REALM = "giot-server"
COLORS = {
    "accepted": "#2e7d32",
    "refused": "#c62828",
    "missed": "#ef6c00",
    "skipped": "#9e9e9e",
    "down": "#1565c0",
    "up": "#6a1b9a",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class StatusPageError(ValueError):
    """The status page cannot be served as asked (a message for the user)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_binding(host: str, password: str | None) -> None:
    """Refuse an address other machines reach unless a password guards it."""
    if not is_loopback(host) and not password:
        raise StatusPageError(
            f"refusing to serve the status page on {host} without a login: give "
            "--status-password-file FILE, or keep --status-host 127.0.0.1"
        )


def read_password(path: Path) -> str:
    """Return the first line of ``path``; a missing or empty one is an error."""
    try:
        text = path.read_text("utf-8")
    except OSError as err:
        raise StatusPageError(f"cannot read the status page password file: {err}") from err
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise StatusPageError(f"the status page password file {path} is empty")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it", path)
    return password


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Build a server-side TLS context from a certificate and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise StatusPageError(f"cannot load {cert} / {key} for the status page: {err}") from err
    return context


@dataclass(frozen=True)
class StatusConfig:
    """Where the page reads and listens, and how it is guarded."""

    checkpoint_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page."""
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"


# -- what the page shows --------------------------------------------------------------------------
def _float(value: object) -> float:
    """Read a number from the file; NaN for anything else (a hand-edited or older line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _num(rec: dict[str, Any], key: str) -> float:
    return _float(rec.get(key))


def _metric_series(rounds: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Every metric per round: ``train loss``, ``clients: eval-loss``, ``server: auroc`` ..."""

    def group(rec: dict[str, Any], name: str) -> dict[str, Any]:
        value = rec.get(name)
        return value if isinstance(value, dict) else {}

    names: dict[str, tuple[str, str | None]] = {}
    for rec in rounds:
        if "train_loss" in rec:
            names.setdefault("train loss", ("train_loss", None))
        for name, label in (("eval_clients", "clients"), ("eval_server", "server")):
            for key in group(rec, name):
                names.setdefault(f"{label}: {key}", (name, key))
    out: dict[str, list[float]] = {}
    for label, (name, sub) in names.items():
        out[label] = [
            _float(rec.get(name) if sub is None else group(rec, name).get(sub)) for rec in rounds
        ]
    return out


def summary(history: History) -> dict[str, Any]:
    """Return what the header says."""
    rounds = history.rounds
    if not rounds:
        return {"rounds": 0}
    last = rounds[-1]
    seen = [r.get("nodes_seen", r.get("available", 0)) for r in rounds]
    out: dict[str, Any] = {
        "rounds": len(rounds),
        "current_round": last["round"],
        "strategy": last.get("strategy"),
        "nodes_seen": max((int(s) for s in seen if isinstance(s, (int, float))), default=0),
        "last_ended": last.get("ended"),
        "last_latency_s": last.get("latency_s"),
        "model_version": last.get("model_version"),
        "model_sha256": last.get("model_sha256"),
    }
    if "dp_epsilon" in last:
        out |= {"dp_epsilon": last["dp_epsilon"], "dp_delta": last.get("dp_delta")}
    return out


# -- plots ----------------------------------------------------------------------------------------
def _figure(title: str, ylabel: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure  # noqa: PLC0415 - only the page needs matplotlib
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    return fig, ax


def _participation(rounds: Sequence[dict[str, Any]]) -> Figure:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    fig, ax = _figure("Nodes per round", "nodes")
    xs = [r["round"] for r in rounds]
    bottom = [0.0] * len(rounds)
    for part in ("accepted", "refused", "missed", "skipped"):
        heights = [_num(r, part) for r in rounds]
        heights = [h if math.isfinite(h) and h > 0 else 0.0 for h in heights]
        bars = ax.bar(xs, heights, 0.8, bottom=bottom, color=COLORS[part], label=part, lw=0)
        for x, rect in zip(xs, bars, strict=True):
            rect.set_gid(f"{part}-r{x}")  # lets a test find each round's bar
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", fontsize=8, ncols=4, frameon=False)
    ax.set_ylim(0, max(max(bottom, default=1.0), 1.0) * 1.25)  # room for the legend
    return fig


def _traffic(rounds: Sequence[dict[str, Any]]) -> Figure:
    peak = max(max(_num(r, "bytes_down"), _num(r, "bytes_up")) for r in rounds)
    unit, scale = next(
        ((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if peak >= s),
        ("B", 1),
    )
    fig, ax = _figure("Bytes per round", f"{unit} per round")
    xs = [r["round"] for r in rounds]
    for key, label, color in (
        ("bytes_down", "down (model to nodes)", COLORS["down"]),
        ("bytes_up", "up (updates to server)", COLORS["up"]),
    ):
        (line,) = ax.plot(xs, [_num(r, key) / scale for r in rounds], "o-", ms=3, color=color)
        line.set_label(label)
        line.set_gid(key)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    return fig


def _latency(rounds: Sequence[dict[str, Any]]) -> Figure:
    fig, ax = _figure("Round latency", "seconds")
    xs = [r["round"] for r in rounds]
    for key, label, style in (
        ("latency_s", "whole round", "o-"),
        ("train_s", "until the update", ".-"),
        ("deadline_s", "reply deadline", "--"),
    ):
        if any(key in r for r in rounds):
            (line,) = ax.plot(xs, [_num(r, key) for r in rounds], style, ms=3, label=label)
            line.set_gid(key)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    return fig


def _metrics(rounds: Sequence[dict[str, Any]], losses: bool) -> Figure | None:
    series = {k: v for k, v in _metric_series(rounds).items() if ("loss" in k) == losses}
    if not series:
        return None
    title = "Loss per round" if losses else "Detection metrics per round"
    fig, ax = _figure(title, "loss" if losses else "value")
    xs = [r["round"] for r in rounds]
    for label, values in series.items():
        (line,) = ax.plot(xs, values, "o-", ms=3, label=label)
        line.set_gid(label.replace(": ", "-").replace(" ", "-"))
    ax.legend(fontsize=8, frameon=False)
    return fig


def _privacy(rounds: Sequence[dict[str, Any]]) -> Figure | None:
    if not any("dp_epsilon" in r for r in rounds):
        return None
    delta = next((r["dp_delta"] for r in reversed(rounds) if "dp_delta" in r), None)
    fig, ax = _figure("Privacy spent (DP)", "epsilon" + (f" (delta {delta:g})" if delta else ""))
    xs = [r["round"] for r in rounds]
    (line,) = ax.plot(xs, [_num(r, "dp_epsilon") for r in rounds], "o-", ms=3, color="#00838f")
    line.set_gid("dp_epsilon")
    ax.set_ylim(bottom=0)
    return fig


PLOTS: dict[str, Callable[[Sequence[dict[str, Any]]], Figure | None]] = {
    "participation": _participation,
    "traffic": _traffic,
    "latency": _latency,
    "loss": lambda rounds: _metrics(rounds, losses=True),
    "metrics": lambda rounds: _metrics(rounds, losses=False),
    "privacy": _privacy,
}
ALT = {
    "participation": "Nodes per round: accepted, refused, missed and skipped",
    "traffic": "Bytes moved per round, down to the nodes and up to the server",
    "latency": "Seconds per round",
    "loss": "Loss per round",
    "metrics": "Detection metrics per round",
    "privacy": "Differential privacy epsilon spent so far, per round",
}


_RENDER_LOCK = threading.Lock()  # rc_context changes matplotlib's global settings


def render_svgs(history: History) -> dict[str, bytes]:
    """Every plot that has data, as SVG documents (text kept as text: searchable, small)."""
    import matplotlib as mpl  # noqa: PLC0415

    rounds = history.rounds[-MAX_PLOTTED:]
    if not rounds:
        return {}
    out: dict[str, bytes] = {}
    with (
        _RENDER_LOCK,
        mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": "giot", "font.size": 9}),
    ):
        for name, plot in PLOTS.items():
            try:
                fig = plot(rounds)
                if fig is not None:
                    buf = io.BytesIO()
                    fig.savefig(buf, format="svg", metadata={"Date": None})
                    out[name] = buf.getvalue()
            except (TypeError, ValueError, KeyError, AttributeError):  # a hand-edited file
                log.exception("status page: the %s plot failed", name)
    return out


# -- the application ------------------------------------------------------------------------------
class _Cache:
    """The history and its plots, re-read and re-rendered only when the file changed."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self.directory = directory
        self.signature: tuple[int, int, int] | None = None
        self.history = History()
        self.svgs: dict[str, bytes] = {}
        self.lock = asyncio.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def etag(self) -> str:
        return hashlib.sha256(repr(self.signature).encode()).hexdigest()[:16]

    async def get(self) -> _Cache:
        async with self.lock:
            signature = self._stat()
            if signature != self.signature:
                history, svgs = await asyncio.to_thread(self._load)
                self.history, self.svgs, self.signature = history, svgs, signature
        return self

    def _load(self) -> tuple[History, dict[str, bytes]]:
        history = read_history(self.directory)
        started = time.perf_counter()
        svgs = render_svgs(history)
        took = time.perf_counter() - started
        log.debug("status page: %d rounds plotted in %.2f s", len(history.rounds), took)
        return history, svgs


_CACHE = web.AppKey("cache", _Cache)


def _auth_middleware(password: str) -> Middleware:
    expected = password.encode()

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/healthz" and not _authorised(request, expected):
            raise web.HTTPUnauthorized(
                text="login required\n",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        return await handler(request)

    return middleware


def _authorised(request: web.Request, expected: bytes) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        _, _, given = base64.b64decode(value.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as err:
        err.headers.update(HEADERS)
        raise
    response.headers.update(HEADERS)
    return response


def make_app(cfg: StatusConfig) -> web.Application:
    """Build the read-only status application over ``cfg.checkpoint_dir``."""
    check_binding(cfg.host, cfg.password)
    middlewares: list[Middleware] = [_security_headers]
    if cfg.password:
        middlewares.append(_auth_middleware(cfg.password))
    app = web.Application(middlewares=middlewares)
    app[_CACHE] = _Cache(cfg.checkpoint_dir)
    app.router.add_get("/", _index)
    app.router.add_get("/plots/{name}.svg", _plot)
    app.router.add_get("/api/rounds", _api_rounds)
    app.router.add_get("/healthz", _healthz)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _api_rounds(request: web.Request) -> web.Response:
    cache = await request.app[_CACHE].get()
    doc = {
        "summary": summary(cache.history),
        "rounds": cache.history.rounds,
        "truncated_lines": cache.history.truncated,
        "corrupt_lines": cache.history.corrupt,
    }
    return web.json_response(doc, dumps=lambda d: json.dumps(d, allow_nan=False))


async def _plot(request: web.Request) -> web.Response:
    cache = await request.app[_CACHE].get()
    svg = cache.svgs.get(request.match_info["name"])
    if svg is None:
        raise web.HTTPNotFound(text="no such plot (yet)\n")
    etag = f'"{cache.etag}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=svg, content_type="image/svg+xml", headers={"ETag": etag})


async def _index(request: web.Request) -> web.Response:
    cache = await request.app[_CACHE].get()
    return web.Response(
        text=page(cache.history, set(cache.svgs), cache.etag), content_type="text/html"
    )


# -- HTML -----------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{font-size:18px;margin:0 0 6px}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px}
.facts b{font-size:16px}
main{padding:16px 24px}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin-bottom:12px}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #dde1e7;padding:6px}
figure img{width:100%;height:auto;display:block}
table{border-collapse:collapse;background:#fff;margin-top:16px;font-size:13px}
th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:right}
th{background:#eef0f4}
td.l{text-align:left}
.empty{background:#fff;border:1px solid #dde1e7;padding:28px;font-size:16px}
footer{color:#667;padding:4px 24px 20px;font-size:12px}
"""


def _fmt_bytes(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def _fmt(value: object, spec: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return format(value, spec)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 129600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _facts(history: History) -> list[tuple[str, str]]:
    s = summary(history)
    facts = [
        ("Round", f"{s['current_round']}"),
        ("Rounds stored", f"{s['rounds']}"),
        ("Nodes seen", f"{s['nodes_seen']}"),
    ]
    ended = s.get("last_ended")
    if isinstance(ended, (int, float)):
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ended))
        facts.append(("Last round", f"{when} ({_ago(max(time.time() - ended, 0.0))})"))
    facts.append(("Took", f"{_fmt(s.get('last_latency_s'), '.1f')} s"))
    version = f"v{_fmt(s.get('model_version'))}"
    if s.get("model_sha256"):
        version += f" ({str(s['model_sha256'])[:12]})"
    facts.append(("Model", version))
    if s.get("strategy"):
        facts.append(("Strategy", str(s["strategy"])))
    if "dp_epsilon" in s:
        delta = f" (delta {_fmt(s.get('dp_delta'), 'g')})" if s.get("dp_delta") else ""
        facts.append(("DP epsilon", f"{_fmt(s['dp_epsilon'], '.2f')}{delta}"))
    return facts


def _reasons(rec: dict[str, Any]) -> str:
    reasons = rec.get("refused_reasons") or {}
    return ", ".join(f"{k}: {v}" for k, v in reasons.items()) if isinstance(reasons, dict) else ""


def _table(rounds: Sequence[dict[str, Any]]) -> str:
    cols = ("round", "asked", "accepted", "refused", "missed", "skipped")
    head = "".join(f"<th>{c}</th>" for c in cols)
    head += "<th>down</th><th>up</th><th>latency</th><th>refused because</th>"
    rows = []
    for rec in reversed(rounds[-TABLE_ROWS:]):
        cells = "".join(f"<td>{_fmt(rec.get(c))}</td>" for c in cols)
        cells += f"<td>{_fmt_bytes(rec.get('bytes_down'))}</td>"
        cells += f"<td>{_fmt_bytes(rec.get('bytes_up'))}</td>"
        cells += f"<td>{_fmt(rec.get('latency_s'), '.1f')} s</td>"
        cells += f"<td class=l>{html.escape(_reasons(rec))}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><caption>Latest rounds</caption><tr>{head}</tr>{''.join(rows)}</table>"


def page(history: History, plots: set[str], version: str) -> str:
    """Render the whole page: one HTML document, inline CSS, the plots as same-origin images."""
    esc = html.escape
    if history.rounds:
        facts = "".join(f"<span>{esc(k)}: <b>{esc(v)}</b></span>" for k, v in _facts(history))
        figures = "".join(
            f'<figure><img src="/plots/{name}.svg?v={version}" alt="{esc(ALT[name])}" '
            f'width="640" height="300"></figure>'
            for name in PLOTS
            if name in plots
        )
        count = len(history.rounds)
        shown = f"<p>Plots show the last {MAX_PLOTTED} of {count} rounds.</p>"
        body = (shown if count > MAX_PLOTTED else "") + f'<div class="plots">{figures}</div>'
        body += _table(history.rounds)
    else:
        facts = "<span>Round: <b>none yet</b></span>"
        body = (
            '<div class="empty" id="no-rounds">No rounds yet: the first line appears here when '
            "the federation's first round ends.</div>"
        )
    skipped = history.truncated + history.corrupt
    warn = (
        f'<div class="warn">{skipped} line(s) of {FILE_NAME} could not be read and were '
        "skipped (an unfinished last line is normal while a round is being written).</div>"
        if skipped
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>giot-server status</title><style>{CSS}</style></head>
<body><header><h1>giot-server: federation status</h1><div class="facts" id="facts">{facts}</div>
</header><main>{warn}{body}</main>
<footer>Read-only. Refreshes every {REFRESH_S} s. The same rounds as JSON:
<a href="/api/rounds">/api/rounds</a>.</footer></body></html>
"""


# -- serving --------------------------------------------------------------------------------------
def serve_forever(cfg: StatusConfig) -> None:
    """Serve the page in this thread until SIGINT/SIGTERM (``giot-server status-page``)."""
    app = make_app(cfg)
    log.info("status page on %s (reading %s)", cfg.url, cfg.checkpoint_dir / FILE_NAME)
    web.run_app(app, host=cfg.host, port=cfg.port, ssl_context=cfg.tls, print=None, access_log=None)


class StatusServer:
    """The page in a thread of its own, beside ``giot-server run``'s blocking work."""

    def __init__(self, cfg: StatusConfig) -> None:
        self.cfg = cfg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> None:
        """Bind and serve; raises ``OSError`` when the port cannot be bound."""
        app = make_app(self.cfg)  # refuses an unguarded binding before a thread exists
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="giot-status-page", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(app), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise
        log.info("status page on %s", self.cfg.url)

    async def _serve(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, ssl_context=self.cfg.tls)
        await site.start()

    def stop(self) -> None:
        """Stop serving; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
            except Exception as err:  # stopping must go on
                log.warning("status page did not stop cleanly: %s", err)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not loop.is_running():
            loop.close()
        self._loop = self._thread = None
