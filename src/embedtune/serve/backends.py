"""What computes the vectors of one padded batch of token ids: ONNX Runtime on the exported graph (CPU; the
graph holds pooling and normalisation and was parity-checked at export) or PyTorch through the folder's own
sentence-transformers modules (a GPU, or a folder without a graph). `serve.backend=auto` picks."""

from __future__ import annotations

import os
import numpy as np
import torch

from embedtune.errors import EmbedtuneError
from embedtune.precision import autocast, use_bf16
from embedtune.serve.model_folder import ModelFolder

BACKENDS = ("auto", "onnx", "torch")


def pad(batch: list[list[int]], pad_id: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask (int64) of token id lists, padded to the longest on the tokenizer's side."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = ids
        mask[row, span] = 1
    return input_ids, mask


class OnnxBackend:
    name = "onnx"

    def __init__(self, folder: ModelFolder, threads: int):
        import onnxruntime

        if folder.onnx is None:
            raise EmbedtuneError(f"serve.backend=onnx: {folder.path} has no {folder.path.name}/onnx/sentence_embedding.onnx "
                                 "(export with export.onnx=true), or use serve.backend=torch")
        if not folder.include_prompt:
            raise EmbedtuneError("serve.backend=onnx: this model leaves its prompt out of mean pooling, which the graph "
                                 "cannot; use serve.backend=torch")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder.onnx), options, providers=["CPUExecutionProvider"])
        self.precision, self.on_gpu = "fp32", False

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, prompt_length: int) -> np.ndarray:
        (vectors,) = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        return np.asarray(vectors, dtype=np.float32)


class TorchBackend:
    name = "torch"

    def __init__(self, folder: ModelFolder, precision: str, threads: int):
        from sentence_transformers import SentenceTransformer

        cuda = torch.cuda.is_available()
        if threads and not cuda:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(folder.path), device="cuda" if cuda else "cpu").eval()
        self.bf16 = use_bf16(precision)
        if self.bf16 and cuda:  # as eval loads it there (model.dtype=auto): bf16 weights under bf16 autocast
            self.model = self.model.to(torch.bfloat16)
        self.precision, self._precision_setting = ("bf16" if self.bf16 else "fp32"), precision
        self.device = self.model.device
        self.on_gpu = cuda

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, prompt_length: int) -> np.ndarray:
        features = {"input_ids": torch.from_numpy(input_ids).to(self.device),
                    "attention_mask": torch.from_numpy(attention_mask).to(self.device)}
        if prompt_length:
            features["prompt_length"] = prompt_length
        with autocast(self._precision_setting):
            vectors = self.model.forward(features)["sentence_embedding"]
        return vectors.float().cpu().numpy()


def load_backend(kind: str, folder: ModelFolder, precision: str, threads: int) -> OnnxBackend | TorchBackend:
    """`auto`: PyTorch on a GPU, ONNX Runtime on a CPU where the folder has the graph, else PyTorch."""
    if kind not in BACKENDS:
        raise EmbedtuneError(f"serve.backend={kind} is not one of {', '.join(BACKENDS)}")
    if kind == "auto":
        kind = "onnx" if folder.onnx is not None and folder.include_prompt and not torch.cuda.is_available() else "torch"
    return OnnxBackend(folder, threads) if kind == "onnx" else TorchBackend(folder, precision, threads)


def dimensions_of(backend, tokens) -> int:
    """The width of the model's vectors (one short text through the backend)."""
    ids = tokens(["a"], "query", "END")
    return int(backend.embed(*pad(ids, tokens.pad_id, tokens.left_padded), 0).shape[1])

