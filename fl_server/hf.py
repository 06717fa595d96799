"""Bridge the numpy GIoT model to transformers, torch and ONNX Runtime (server side only).

One set of weights, three runtimes: the hubs run the numpy engine, the server (or a GPU, or a
glibc hub that has torch) runs ``GPT2LMHeadModel``, and ONNX Runtime runs an exported graph.
Parameter names are already GPT-2's, so conversion is a state_dict copy in either direction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from giot_engine.model import GIoTConfig, GIoTModel, param_shapes

_TIED = "lm_head.weight"


def hf_config(config: GIoTConfig) -> GPT2Config:
    """Return the transformers config that builds exactly the GIoT network."""
    return GPT2Config.from_dict(config.to_hf_dict())


def to_transformers(model: GIoTModel) -> GPT2LMHeadModel:
    """Return a ``GPT2LMHeadModel`` (eval mode, float32) holding a copy of ``model``'s weights."""
    hf = GPT2LMHeadModel(hf_config(model.config))
    state = {name: torch.from_numpy(p.copy()) for name, p in model.params.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {_TIED}:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    if hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to wte")
    module: torch.nn.Module = hf  # transformers' own eval() is untyped
    module.eval()
    return hf


def from_transformers(hf_model: GPT2LMHeadModel) -> GIoTModel:
    """Copy a (tied) ``GPT2LMHeadModel`` into a numpy ``GIoTModel``."""
    config = GIoTConfig.from_hf_dict(hf_model.config.to_dict())
    state = hf_model.state_dict()
    if _TIED in state and not torch.equal(state[_TIED], state["transformer.wte.weight"]):
        raise ValueError("lm_head.weight differs from wte: GIoT ties them")
    params = {
        n: state[n].detach().to("cpu", torch.float32).numpy().copy() for n in param_shapes(config)
    }
    return GIoTModel(config, params)


class _Logits(torch.nn.Module):
    """Forward that returns only the logits tensor, the one output the exported graph needs."""

    def __init__(self, hf: GPT2LMHeadModel) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.hf(input_ids=input_ids, use_cache=False).logits
        return logits


def export_onnx(model: GIoTModel, path: str | os.PathLike[str]) -> Path:
    """Export ``model`` to one ONNX file: input ``input_ids`` (batch, sequence) int64 -> ``logits``.

    Uses the dynamo exporter: the TorchScript one fails on GPT-2's ``aten::diff`` (transformers
    5.x). Batch and sequence length are dynamic (sequence up to n_positions).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_pos = model.config.n_positions
    example = torch.zeros((2, min(3, n_pos)), dtype=torch.long)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence", min=1, max=n_pos)}
    with torch.no_grad():
        program = torch.onnx.export(
            _Logits(to_transformers(model)).eval(),
            (example,),
            dynamo=True,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": dims},
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(out), external_data=False)
    return out


class OnnxLogits:
    """An ONNX Runtime session over an exported GIoT graph; calls return float32 logits."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Return logits (B, T, V) for token ids (B, T)."""
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64)}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)

    def token_nll(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(B, T) -> (B, T-1) next-token NLL, as ``GIoTModel.token_nll``."""
        arr = np.asarray(ids, dtype=np.int64)
        return nll_from_logits(self(arr), arr)


def nll_from_logits(
    logits: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """-log softmax(logits[:, t])[ids[:, t+1]] for t < T-1."""
    z = logits[:, :-1]
    m = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(z, ids[:, 1:, None], axis=2)[..., 0]
    out: npt.NDArray[np.float32] = (lse - picked).astype(np.float32)
    return out
