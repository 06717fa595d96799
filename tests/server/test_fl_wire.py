"""Server-side speed paths must decide exactly what the slow paths decide."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array

from fl_server.flwr_config import local_connection, remote_connection, write
from fl_server.strategy.aggregate import ServerAdam, SparseMean
from fl_server.strategy.sensing import ConditionSensor, PlannerConfig
from fl_server.validation import array_numpy


@pytest.mark.parametrize(
    "a",
    [
        np.zeros(0, np.int8),
        np.arange(7, dtype=np.uint16),
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1, 2], ">i4"),
        np.array(3.0, np.float32),
    ],
)
def test_array_numpy_equals_flowers_decoder(a: np.ndarray) -> None:
    arr = Array(a)
    fast, slow = array_numpy(arr), arr.numpy()
    assert fast.dtype == slow.dtype
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow)


def test_array_numpy_refuses_an_array_that_lies_about_its_shape() -> None:
    arr = Array(np.arange(4, dtype=np.float32))
    arr.__dict__["shape"] = (2,)
    with pytest.raises(ValueError, match="declares"):
        array_numpy(arr)
    arr = Array(np.arange(4, dtype=np.float32))
    arr.__dict__["stype"] = "torch.raw"
    with pytest.raises(TypeError):
        array_numpy(arr)


def test_streaming_sparse_mean_is_per_coordinate_weighted_mean() -> None:
    shapes = {"a": (2, 2), "b": (3,)}
    acc = SparseMean(shapes)
    acc.add({"a": (np.array([0, 3]), np.array([1.0, 2.0], np.float32))}, 1.0)
    acc.add({"a": (np.array([0]), np.array([4.0], np.float32)), "b": (np.array([2]),
             np.array([6.0], np.float32))}, 3.0)  # fmt: skip
    mean, cover = acc.result()
    assert mean["a"].ravel().tolist() == [pytest.approx(13 / 4), 0.0, 0.0, 2.0]
    assert mean["b"].tolist() == [0.0, 0.0, 6.0]
    assert cover["a"].ravel().tolist() == [4.0, 0.0, 0.0, 1.0]
    # DGC-style: unsent coordinates are zeros of every update (error feedback sends them later)
    dgc, _ = acc.result(over_all=True)
    assert dgc["a"].ravel().tolist() == [pytest.approx(13 / 4), 0.0, 0.0, 0.5]
    assert dgc["b"].tolist() == [0.0, 0.0, pytest.approx(18 / 4)]


def test_unmeasured_round_uses_the_deadline_prior() -> None:
    sensor = ConditionSensor(PlannerConfig(max_deadline_s=600.0, initial_deadline_s=20.0))
    assert sensor.deadline([None, 3.0]) == 20.0
    assert ConditionSensor(PlannerConfig(max_deadline_s=600.0)).deadline([None]) == 600.0


def test_federation_helper_writes_flower_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    path = write("giot-sim", local_connection(5, 1), default=True)
    write("giot", remote_connection("link.example:9093", None, insecure=True), default=False)
    conf = tomllib.loads(path.read_text())["superlink"]
    assert conf["default"] == "giot-sim"
    assert conf["giot-sim"]["address"] == ":local:"
    assert conf["giot-sim"]["options"]["num-supernodes"] == 5
    assert conf["giot"] == {"address": "link.example:9093", "insecure": True}
    with pytest.raises(ValueError, match="exactly one"):
        remote_connection("x:1", "ca.pem", insecure=True)


def test_server_momentum_is_fedavgm() -> None:
    opt = ServerAdam(eta=1.0, beta1=0.5, kind="sgdm")
    x = {"w": np.zeros(2, np.float32)}
    x = opt.step(x, {"w": np.array([1.0, -2.0], np.float32)})
    assert x["w"].tolist() == [1.0, -2.0]
    x = opt.step(x, {"w": np.array([1.0, 2.0], np.float32)})  # m = 0.5 * m + d
    assert x["w"].tolist() == [2.5, -1.0]
