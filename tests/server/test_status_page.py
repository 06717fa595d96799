"""The round history the ServerApp writes and the status page ``giot-server`` serves from it.

The history is exercised through the real strategies (GSFS and a Flower baseline on the
in-process grid); the page through aiohttp's test client on a synthetic three-round history, and
once as the real ``giot-server status-page`` process over TLS.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from flwr.app import Message, MetricRecord

from fl_server.checkpoint import load_latest
from fl_server.client_app import make_client_app
from fl_server.history import FILE_NAME, append_round, parse_history, read_history
from fl_server.run_config import RunConfig
from fl_server.server_app import build_strategy, initial_arrays, run_server
from fl_server.simulation.grid import LocalGrid
from giot_server.status_page import (
    StatusConfig,
    StatusPageError,
    StatusServer,
    check_binding,
    make_app,
)
from tests.server.deployment import ROOT, free_ports
from tests.server.test_fl_strategy import BASE, _largest, _replace_arrays

GS_ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "engine" / "src")])}


def synthetic_round(rnd: int) -> dict[str, Any]:
    """One round as the GSFS strategy writes it, DP on, server metrics present."""
    return {
        "v": 1,
        "round": rnd,
        "strategy": "gsfs",
        "started": 1_790_000_000.0 + 60 * rnd,
        "ended": 1_790_000_012.5 + 60 * rnd,
        "latency_s": 10.0 + rnd,
        "train_s": 8.0 + rnd,
        "deadline_s": 30.0,
        "available": 6,
        "nodes_seen": 6,
        "asked": 5,
        "replied": 4,
        "accepted": 4 - (rnd == 2),
        "refused": int(rnd == 2),
        "refused_reasons": {"update norm too large": 1} if rnd == 2 else {},
        "missed": 1,
        "skipped": 1,
        "bytes_up": 20_000 * rnd,
        "bytes_down": 90_000,
        "train_loss": 4.0 - 0.5 * rnd,
        "eval_clients": {"eval-loss": 4.2 - 0.5 * rnd},
        "eval_server": {"auroc": 0.7 + 0.05 * rnd, "eval-loss": 4.1 - 0.5 * rnd},
        "dp_epsilon": 1.5 * rnd,
        "dp_delta": 1e-5,
        "model_version": rnd,
        "model_sha256": f"{rnd:016x}",
    }


@pytest.fixture
def three_rounds(tmp_path: Path) -> Path:
    for rnd in (1, 2, 3):
        append_round(tmp_path, synthetic_round(rnd))
    return tmp_path


def _cfg(**extra: Any) -> RunConfig:
    return RunConfig.load({}, {**BASE, **extra})


# -- the history file -----------------------------------------------------------------------------
def test_append_and_read_back_newest_line_of_a_round_wins(tmp_path: Path) -> None:
    append_round(tmp_path, {"round": 1, "train_loss": float("nan"), "x": [float("inf")]})
    append_round(tmp_path, {"round": 2, "latency_s": 1.0})
    append_round(tmp_path, {"round": 2, "latency_s": 2.0})  # re-run after a restart
    path = tmp_path / FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().count(b"\n") == 3
    history = read_history(tmp_path)
    assert [r["round"] for r in history.rounds] == [1, 2]
    assert history.rounds[0]["train_loss"] is None  # NaN is not JSON a browser parses
    assert history.rounds[0]["x"] == [None]
    assert history.rounds[1]["latency_s"] == 2.0
    assert (history.truncated, history.corrupt) == (0, 0)
    assert read_history(tmp_path / "absent").rounds == []


def test_torn_last_line_is_skipped_counted_and_not_glued_to_the_next(tmp_path: Path) -> None:
    append_round(tmp_path, {"round": 1})
    append_round(tmp_path, {"round": 2})
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b'{"round": 3, "late')  # the process died mid-write
    history = read_history(tmp_path)
    assert [r["round"] for r in history.rounds] == [1, 2]
    assert (history.truncated, history.corrupt) == (1, 0)

    append_round(tmp_path, {"round": 3})  # the restarted server re-runs round 3
    history = read_history(tmp_path)
    assert [r["round"] for r in history.rounds] == [1, 2, 3]
    assert (history.truncated, history.corrupt) == (0, 1)


def test_lines_that_are_not_rounds_are_counted() -> None:
    raw = b'{"round": 1}\n[1, 2]\n{"round": "2"}\n{"round": true}\nnot json\n\n{"round": 4}\n'
    history = parse_history(raw)
    assert [r["round"] for r in history.rounds] == [1, 4]
    assert history.corrupt == 4


def test_gsfs_run_writes_one_line_per_round(tmp_path: Path) -> None:
    extra = {"fraction-train": 0.5, "fraction-evaluate": 1.0, "dp-noise": 1.0, "dp-clip": 0.5}
    cfg = _cfg(**extra, **{"checkpoint-dir": str(tmp_path)})
    run_server(LocalGrid(make_client_app(cfg), 4), cfg)
    rounds = read_history(tmp_path).rounds
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["strategy"] == "gsfs"
        assert (r["available"], r["asked"], r["skipped"], r["nodes_seen"]) == (4, 2, 2, 4)
        assert (r["replied"], r["accepted"], r["refused"], r["missed"]) == (2, 2, 0, 0)
        assert r["bytes_up"] > 0
        assert r["bytes_down"] > r["bytes_up"]  # the first downlink is the whole model
        assert r["started"] <= r["ended"]
        assert 0 < r["train_s"] <= r["latency_s"]
        assert r["eval_clients"]["eval-loss"] > 0
        assert r["dp_delta"] == 1e-5
    assert [r["model_version"] for r in rounds] == [1, 2, 3]
    assert len({r["model_sha256"] for r in rounds}) == 3
    assert 0 < rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"] < rounds[2]["dp_epsilon"]
    ckpt = load_latest(tmp_path)
    assert ckpt is not None
    assert ckpt.server_round == rounds[-1]["round"]


def test_refused_and_missed_nodes_are_counted_by_reason(tmp_path: Path) -> None:
    cfg = _cfg(**{"num-server-rounds": 1, "max-update-norm": 50.0, "checkpoint-dir": str(tmp_path)})
    grid = LocalGrid(make_client_app(cfg), 7)

    def nan_scale(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a[f"{_largest(a)}.scale"] = np.array([np.nan], np.float32)
        return a

    def huge(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        a[f"{_largest(a)}.scale"] = np.array([1e9], np.float32)
        return a

    def lying_examples(node: int, reply: Message) -> Message:
        metrics = dict(reply.content.metric_records["metrics"])
        reply.content["metrics"] = MetricRecord({**metrics, "num-examples": 10**12})
        return reply

    grid.tamper = {
        1: lambda n, r: _replace_arrays(r, nan_scale),
        2: lambda n, r: _replace_arrays(r, huge),
        3: lying_examples,
    }
    grid.drop = {4}
    strategy = build_strategy(cfg)
    strategy.start(grid, initial_arrays(cfg), num_rounds=1, timeout=0.3)
    (line,) = read_history(tmp_path).rounds
    assert (line["asked"], line["replied"], line["accepted"], line["missed"]) == (7, 6, 3, 1)
    assert line["refused"] == 3
    assert line["refused_reasons"] == {
        "bad num-examples": 1,
        "non-finite values": 1,
        "update norm too large": 1,
    }


def test_flower_baseline_writes_its_rounds_too(tmp_path: Path) -> None:
    cfg = _cfg(**{"strategy": "fedavg", "checkpoint-dir": str(tmp_path)})
    run_server(LocalGrid(make_client_app(cfg), 3), cfg)
    rounds = read_history(tmp_path).rounds
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["strategy"] == "fedavg" and r["accepted"] == 3 for r in rounds)
    assert all(r["bytes_down"] == r["bytes_up"] > 0 for r in rounds)  # dense both ways
    assert [r["model_version"] for r in rounds] == [1, 2, 3]
    assert "dp_epsilon" not in rounds[0]


def test_no_checkpoint_dir_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(**{"num-server-rounds": 1})
    run_server(LocalGrid(make_client_app(cfg), 2), cfg)
    assert list(tmp_path.rglob(FILE_NAME)) == []


# -- the page -------------------------------------------------------------------------------------
def _svg_text(svg: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


async def test_page_api_and_plots_show_the_rounds(three_rounds: Path) -> None:
    async with TestClient(TestServer(make_app(StatusConfig(three_rounds)))) as client:
        resp = await client.get("/")
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        page = await resp.text()
        assert "Round: <b>3</b>" in page
        assert "Nodes seen: <b>6</b>" in page
        assert "v3 (000000000000" in page
        assert "update norm too large: 1" in page  # round 2's refusal, in the table
        assert "://" not in page  # nothing fetched from elsewhere
        plots = re.findall(r'<img src="/plots/(\w+)\.svg\?v=\w+"', page)
        assert plots == ["participation", "traffic", "latency", "loss", "metrics", "privacy"]

        resp = await client.get("/plots/participation.svg")
        assert resp.content_type == "image/svg+xml"
        svg = await resp.text()
        assert "Nodes per round" in _svg_text(svg)
        assert {"round", "nodes", "accepted", "refused", "missed", "skipped"} <= set(_svg_text(svg))
        assert len(re.findall(r'id="accepted-r\d+"', svg)) == 3
        assert {"1", "2", "3"} <= set(_svg_text(svg))  # the rounds on the x axis
        assert 'id="refused-r2"' in svg

        texts = {}
        for name in ("traffic", "latency", "loss", "metrics", "privacy"):
            texts[name] = _svg_text(await (await client.get(f"/plots/{name}.svg")).text())
        assert {"Bytes per round", "KiB per round"} <= set(texts["traffic"])  # 20-88 KiB
        assert {"Round latency", "seconds", "whole round", "reply deadline"} <= set(
            texts["latency"]
        )
        assert {"train loss", "clients: eval-loss", "server: eval-loss"} <= set(texts["loss"])
        assert "server: auroc" in texts["metrics"]
        assert "Privacy spent (DP)" in texts["privacy"]
        assert "epsilon (delta 1e-05)" in texts["privacy"]

        etag = resp.headers["ETag"]
        again = await client.get("/plots/participation.svg", headers={"If-None-Match": etag})
        assert again.status == 304

        doc = await (await client.get("/api/rounds")).json()
        assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
        assert doc["summary"]["current_round"] == 3
        assert doc["summary"]["dp_epsilon"] == 4.5
        assert (await (await client.get("/healthz")).text()) == "ok\n"
        assert (await client.get("/plots/nope.svg")).status == 404

        append_round(three_rounds, synthetic_round(4))  # the next round ends
        page = await (await client.get("/")).text()
        assert "Round: <b>4</b>" in page
        svg = await (await client.get("/plots/participation.svg")).text()
        assert len(re.findall(r'id="accepted-r\d+"', svg)) == 4
        assert (
            await client.get("/plots/participation.svg", headers={"If-None-Match": etag})
        ).status == 200


async def test_without_dp_or_server_metrics_those_plots_are_left_out(tmp_path: Path) -> None:
    for rnd in (1, 2):
        rec = synthetic_round(rnd)
        for key in ("dp_epsilon", "dp_delta", "eval_server"):
            rec.pop(key)
        append_round(tmp_path, rec)
    async with TestClient(TestServer(make_app(StatusConfig(tmp_path)))) as client:
        page = await (await client.get("/")).text()
        plots = re.findall(r'<img src="/plots/(\w+)\.svg', page)
        assert plots == ["participation", "traffic", "latency", "loss"]
        assert "DP epsilon" not in page


async def test_empty_history_is_a_page_not_an_error(tmp_path: Path) -> None:
    async with TestClient(TestServer(make_app(StatusConfig(tmp_path / "none")))) as client:
        resp = await client.get("/")
        assert resp.status == 200
        page = await resp.text()
        assert "No rounds yet" in page
        assert "<img" not in page
        doc = await (await client.get("/api/rounds")).json()
        assert doc["rounds"] == []
        assert doc["summary"] == {"rounds": 0}
        assert (await client.get("/plots/participation.svg")).status == 404


async def test_a_torn_line_is_reported_on_the_page(three_rounds: Path) -> None:
    with (three_rounds / FILE_NAME).open("ab") as f:
        f.write(b'{"round": 4, "sta')
    async with TestClient(TestServer(make_app(StatusConfig(three_rounds)))) as client:
        page = await (await client.get("/")).text()
        assert "Round: <b>3</b>" in page
        assert "1 line(s) of rounds.jsonl could not be read" in page
        doc = await (await client.get("/api/rounds")).json()
        assert doc["truncated_lines"] == 1


async def test_a_hand_edited_file_still_gives_a_page(tmp_path: Path) -> None:
    odd = {"round": 1, "eval_clients": [1, 2], "accepted": "many", "train_loss": "NaN"}
    lines = [json.dumps(odd), '{"round": 2, "latency_s": NaN, "eval_server": {"auroc": true}}']
    (tmp_path / FILE_NAME).write_text("\n".join(lines) + "\n")
    async with TestClient(TestServer(make_app(StatusConfig(tmp_path)))) as client:
        page = await client.get("/")
        assert page.status == 200
        assert "Round: <b>2</b>" in await page.text()
        assert (await client.get("/plots/participation.svg")).status == 200
        doc = await (await client.get("/api/rounds")).json()
        assert doc["rounds"][1]["latency_s"] is None


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_off_loopback_every_page_needs_the_password(three_rounds: Path) -> None:
    cfg = StatusConfig(three_rounds, host="0.0.0.0", password="correct horse")
    async with TestClient(TestServer(make_app(cfg))) as client:
        for path in ("/", "/api/rounds", "/plots/participation.svg"):
            resp = await client.get(path)
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="giot-server"')
            assert (await client.get(path, headers=_basic("giot", "wrong"))).status == 401
        bad = {"Authorization": "Basic %%%"}
        assert (await client.get("/", headers=bad)).status == 401
        assert (await client.get("/", headers={"Authorization": "Bearer x"})).status == 401
        ok = await client.get("/", headers=_basic("anyone", "correct horse"))
        assert ok.status == 200
        assert "Round: <b>3</b>" in await ok.text()
        assert (await client.get("/healthz")).status == 200  # no login for a supervisor


def test_refuses_to_bind_off_loopback_without_a_password(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::", "giot.lan"):
        with pytest.raises(StatusPageError, match="--status-password-file"):
            make_app(StatusConfig(tmp_path, host=host))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_binding(host, None)


# -- the command ----------------------------------------------------------------------------------
def gs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one short ``giot-server`` command with this checkout's packages."""
    env = {**os.environ, **GS_ENV}
    cmd = [sys.executable, "-m", "giot_server", *args]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_commands_refuse_an_unguarded_lan_binding(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home")]
    out = gs("status-page", *home, "--status-host", "0.0.0.0")
    assert out.returncode == 2
    assert "refusing to serve the status page on 0.0.0.0 without a login" in out.stderr
    out = gs("run", *home, "--insecure", "--status-host", "0.0.0.0", "--no-advertise")
    assert out.returncode == 2
    assert "without a login" in out.stderr
    assert not (tmp_path / "home" / "superlink.db").exists()  # nothing was started
    empty = tmp_path / "empty"
    empty.write_text("\n")
    out = gs("status-page", *home, "--status-password-file", str(empty))
    assert out.returncode == 2
    assert "is empty" in out.stderr


@pytest.fixture
def page_process(three_rounds: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``giot-server status-page`` on the LAN: the home's certificate, a password file."""
    home = tmp_path / "home"
    assert gs("init", "--home", str(home)).returncode == 0
    secret = tmp_path / "password"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    (port,) = free_ports(1)
    args = ["status-page", "--home", str(home), "--checkpoint-dir", str(three_rounds)]
    args += ["--status-host", "0.0.0.0", "--status-port", str(port)]
    args += ["--status-password-file", str(secret)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "giot_server", *args],
        env={**os.environ, **GS_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield port, home / "ca.pem"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode(errors="replace")


def _wait_get(url: str, context: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, bytes]:
    deadline = time.monotonic() + 60
    while True:
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, context=context, timeout=10) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_status_page_command_serves_https_with_a_login(page_process: tuple[int, Path]) -> None:
    port, ca = page_process
    context = ssl.create_default_context(cafile=str(ca))
    base = f"https://127.0.0.1:{port}"
    assert _wait_get(f"{base}/healthz", context, {})[0] == 200
    assert _wait_get(f"{base}/", context, {})[0] == 401
    status, body = _wait_get(f"{base}/api/rounds", context, _basic("x", "correct horse"))
    assert status == 200
    assert [r["round"] for r in json.loads(body)["rounds"]] == [1, 2, 3]


def test_status_server_thread_serves_and_a_busy_port_is_an_oserror(three_rounds: Path) -> None:
    (port,) = free_ports(1)
    page = StatusServer(StatusConfig(three_rounds, port=port))
    page.start()
    try:
        assert page.cfg.url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(f"{page.cfg.url}api/rounds", timeout=10) as resp:
            assert json.loads(resp.read())["summary"]["current_round"] == 3
        with pytest.raises(OSError, match="address already in use"):
            StatusServer(StatusConfig(three_rounds, port=port)).start()
    finally:
        page.stop()
    page.stop()  # idempotent
