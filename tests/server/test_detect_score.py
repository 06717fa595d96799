"""The detect-score contract on small generated Zeek logs, and the shared metrics by hand."""

import csv
from pathlib import Path

import numpy as np
import pytest

from benchmarks.detect_score import main
from benchmarks.metrics import auroc, capture_metrics, prf, scored_mask

FIELDS = [
    "ts",
    "uid",
    "id.orig_h",
    "id.orig_p",
    "id.resp_h",
    "id.resp_p",
    "proto",
    "service",
    "duration",
    "orig_bytes",
    "resp_bytes",
    "conn_state",
    "local_orig",
    "local_resp",
    "missed_bytes",
    "history",
    "orig_pkts",
    "orig_ip_bytes",
    "resp_pkts",
    "resp_ip_bytes",
    "tunnel_parents",
    "label",
    "detailed-label",
]


def _row(  # noqa: PLR0917
    ts: float, uid: str, resp: str, port: int, proto: str, state: str, label: str, detail: str = "-"
) -> str:
    vals = [
        f"{ts:.6f}",
        uid,
        "192.168.1.5",
        "40000",
        resp,
        str(port),
        proto,
        "-",
        "0.1",
        "40",
        "40",
        state,
        "-",
        "-",
        "0",
        "Dd",
        "1",
        "68",
        "1",
        "68",
        "-",
        label,
        detail,
    ]
    return "\t".join(vals)


def _write(path: Path, rows: list[str]) -> None:
    head = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        "#path\tconn",
        "#fields\t" + "\t".join(FIELDS),
    ]
    path.write_text("\n".join(head + rows) + "\n", encoding="utf-8")


def _capture(n: int, t0: float, attack: bool) -> list[str]:
    rows = [_row(t0 + 20 * i, f"B{i}", "192.168.1.1", 53, "udp", "SF", "Benign") for i in range(n)]
    if attack:
        t = t0 + 20 * n
        rows += [
            _row(
                t + 0.3 * i,
                f"A{i}",
                f"45.1.{i}.9",
                23,
                "tcp",
                "S0",
                "Malicious",
                "PartOfAHorizontalPortScan",
            )
            for i in range(30)
        ]
    return rows


def test_cli_writes_one_row_per_flow_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = tmp_path / "train.log", tmp_path / "test.log"
    _write(train, _capture(60, 1.6e9, attack=True))
    rows = _capture(40, 1.7e9, attack=True)
    rows.insert(5, "1700000100.0\tBAD1\tnot-an-ip\tx\ty\tz\ttcp")  # a malformed line
    _write(test, rows)
    out = tmp_path / "out.csv"
    assert (
        main(["--train", str(train), "--test", str(test), "--out", str(out), "--model", "bigram"])
        == 0
    )
    got = list(csv.reader(out.open()))
    assert got[0] == ["uid", "score", "alarm"]
    assert len(got) == 1 + len(rows)
    assert [r[0] for r in got[1:6]] == ["B0", "B1", "B2", "B3", "B4"]
    assert got[6][1] == ""
    assert got[6][2] == "0"
    assert got[-1][0] == "A29"
    assert all(r[2] in ("0", "1") for r in got[1:])
    assert any(r[2] == "1" for r in got[-30:])
    assert not any(r[2] == "1" for r in got[1:21])
    assert "rejected 1 row" in capsys.readouterr().err


def test_auroc_and_prf_by_hand() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [1.0, 1.0]) == pytest.approx(0.5)
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))
    t = np.array([1, 1, 0, 0], dtype=bool)
    p, r, f = prf(t, np.array([1, 0, 1, 0], dtype=bool))
    assert (p, r, f) == (0.5, 0.5, 0.5)


def test_capture_metrics_windows_by_hand() -> None:
    # windows from the first scored flow: [0,60) [60,120) [120,180)
    ts = np.array([0.0, 10.0, 70.0, 80.0, 130.0, np.nan, 5.0])
    mal = np.array([0, 1, 0, 0, 0, 0, 1], dtype=bool)
    score = np.array([0.1, 0.9, 0.2, 0.8, 0.05, np.nan, 5.0])
    alarm = np.array([0, 1, 0, 1, 0, 0, 1], dtype=bool)
    scored = np.array([1, 1, 1, 1, 1, 1, 0], dtype=bool)  # last flow is another host's
    m = capture_metrics(ts, mal, score, alarm, scored)
    assert m.windows == 3
    assert m.malicious_windows == 1
    assert m.window_precision == 0.5
    assert m.window_recall == 1.0
    assert m.false_alarm_windows == 1
    assert m.window_auroc == pytest.approx(1.0)
    assert m.device_days == pytest.approx(130.0 / 86400)
    assert m.flow_precision == 0.5
    assert m.flow_recall == 1.0
    assert list(scored_mask(["a", "b", "a"], all_flows=False)) == [True, False, True]
    assert scored_mask(["a", "b"], all_flows=True).all()
