"""Teachers: models that score (query, passage) pairs for distillation and for cleaning mined negatives.

Three kinds behind one call, `score(queries, passages) -> list[float]` (pair i is queries[i], passages[i];
higher = more relevant; nan where a teacher gave no score):
- cross_encoder: any Hugging Face sequence-classification checkpoint (local folder or hub id), pairs
  tokenized together, batched by length, bf16 where native. One logit: that logit; several labels: the
  log-odds of the last label (the "relevant" one by convention) against the others.
- biencoder: a (stronger) embedder's cosine between the query's and the passage's embeddings.
- llm: pointwise P("yes") to "Does the passage answer the query?" from any generator backend: next-token
  logits locally (transformers), top logprobs from vLLM or an OpenAI-compatible server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from embedtune.assets import resolve_model
from embedtune.distributed import ShardConfig
from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import yes_no_probability
from embedtune.generate.backends import BackendConfig, make_backend
from embedtune.generate.decoding import prompt_text
from embedtune.generate.prompts import Prompt, cut
from embedtune.manifest import not_in_key
from embedtune.model import on_device
from embedtune.precision import autocast

KINDS = ("none", "cross_encoder", "biencoder", "llm")
LLM_PROMPT = ("Does the passage answer the search query? Answer yes or no.\n\nQuery: {query}\n\n"
              "Passage: {passage}")


@dataclass
class TeacherConfig:
    kind: str = "none"                # none | cross_encoder | biencoder | llm (`embedtune score` is off with none)
    model: str = ""                   # cross_encoder / biencoder: alias, local folder or hub id (llm: teacher.llm.model)
    max_length: int = 512             # tokens of query + passage (cross_encoder) or of a passage (biencoder)
    precision: str = "auto"           # auto (bf16 where the GPU/CPU computes it natively) | bf16 | fp32
    query_prefix: str = ""            # biencoder: e.g. "query: " for E5-style teachers
    passage_prefix: str = ""          # biencoder: e.g. "passage: "
    llm: BackendConfig = field(default_factory=lambda: BackendConfig(max_new_tokens=1))  # llm: the judge model
    llm_prompt: str = LLM_PROMPT      # llm: the yes/no question ({query}, {passage})
    passage_max_chars: int = 1000     # llm: passages are cut to this length in the prompt
    clean_negatives: bool = False     # drop mined negatives the teacher scores at or above their positive
    batch_size: int = not_in_key(32)  # pairs per forward pass
    shard: ShardConfig = not_in_key(ShardConfig)  # this worker's shard of the pairs (default: rank or SLURM array)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


class CrossEncoderTeacher:
    def __init__(self, cfg: TeacherConfig):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(cfg.model).path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise EmbedtuneError(f"teacher.model={cfg.model}: cannot load a sequence-classification model "
                                 f"(safetensors weights): {e}") from e
        self.model = on_device(self.model).eval()  # this rank's GPU when there is one
        self.cfg = cfg

    @torch.no_grad()
    def score(self, queries: list[str], passages: list[str]) -> list[float]:
        encoded = self.tokenizer(queries, passages, truncation="only_second", max_length=self.cfg.max_length)
        ids = encoded["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out = [math.nan] * len(ids)
        device = next(self.model.parameters()).device
        with tqdm(total=len(ids), desc="score: cross-encoder", unit="pair", mininterval=1.0) as bar:
            for start in range(0, len(order), self.cfg.batch_size):
                rows = order[start:start + self.cfg.batch_size]
                batch = self.tokenizer.pad({k: [encoded[k][i] for i in rows] for k in encoded}, return_tensors="pt")
                with autocast(self.cfg.precision):
                    logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
                for i, value in zip(rows, relevance(logits).tolist()):
                    out[i] = value
                bar.update(len(rows))
        return out


def relevance(logits: torch.Tensor) -> torch.Tensor:
    """[N, labels] -> [N]: the logit of a one-label model, else the last label's log-odds against the rest."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return logits[:, -1] - torch.logsumexp(logits[:, :-1], dim=1)


class BiencoderTeacher:
    def __init__(self, cfg: TeacherConfig):
        from embedtune.model import Encoder, ModelConfig

        model_cfg = ModelConfig(name=cfg.model, query_prefix=cfg.query_prefix, passage_prefix=cfg.passage_prefix,
                                passage_max_length=cfg.max_length)
        self.encoder = on_device(Encoder.load(model_cfg, precision=cfg.precision))
        self.cfg = cfg

    def score(self, queries: list[str], passages: list[str]) -> list[float]:
        from embedtune.encode import encode

        unique_q, unique_p = sorted(set(queries)), sorted(set(passages))
        with autocast(self.cfg.precision):
            q = encode(self.encoder, unique_q, "query", self.cfg.batch_size, desc="score: teacher queries")
            p = encode(self.encoder, unique_p, "passage", self.cfg.batch_size, desc="score: teacher passages")
        q_row, p_row = {t: i for i, t in enumerate(unique_q)}, {t: i for i, t in enumerate(unique_p)}
        qi = torch.tensor([q_row[t] for t in queries], dtype=torch.long)
        pi = torch.tensor([p_row[t] for t in passages], dtype=torch.long)
        return (q[qi] * p[pi]).sum(-1).tolist()  # cosine: the encoder normalises (model.normalize)


class LLMTeacher:
    """P(yes) of a generator model asked whether the passage answers the query (the answer's first token)."""

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.backend = make_backend(cfg.llm)

    def prompts(self, queries: list[str], passages: list[str]) -> list[Prompt]:
        out = []
        for q, p in zip(queries, passages):
            text = self.cfg.llm_prompt.format(query=q, passage=cut(p, self.cfg.passage_max_chars))
            out.append(Prompt([{"role": "user", "content": text}], f"{text}\n\nAnswer:", 1, group="teacher"))
        return out

    def score(self, queries: list[str], passages: list[str]) -> list[float]:
        prompts = self.prompts(queries, passages)
        if self.cfg.llm.backend == "transformers":
            return self._local(prompts)
        if self.cfg.llm.backend == "openai":
            return self.backend.yes_no_probabilities(prompts)
        if self.cfg.llm.backend == "onnx":
            return self._onnx(prompts)
        if self.cfg.llm.backend == "vllm":
            return self._vllm(prompts)
        raise EmbedtuneError(f"teacher.llm.backend={self.cfg.llm.backend} is not one of transformers, onnx, vllm, "
                             "openai")

    @torch.no_grad()
    def _local(self, prompts: list[Prompt]) -> list[float]:
        backend = self.backend
        if backend.seq2seq:
            raise EmbedtuneError("teacher.kind=llm with the transformers backend needs a causal (decoder) model")
        yes, no = _word_tokens(backend.tokenizer, "yes"), _word_tokens(backend.tokenizer, "no")
        ids = backend.token_ids(prompts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out = [math.nan] * len(ids)
        pad = backend.tokenizer.pad_token_id
        with tqdm(total=len(ids), desc="score: llm", unit="pair", mininterval=1.0) as bar:
            for start in range(0, len(order), self.cfg.batch_size):
                rows = order[start:start + self.cfg.batch_size]
                width = max(len(ids[i]) for i in rows)
                tokens = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in rows], device=backend.device)
                mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows],
                                    device=backend.device)
                logits = backend.model(input_ids=tokens, attention_mask=mask).logits.float()
                last = logits[torch.arange(len(rows)), mask.sum(1) - 1].log_softmax(-1)
                p_yes, p_no = last[:, yes].exp().sum(1), last[:, no].exp().sum(1)
                for i, value in zip(rows, (p_yes / (p_yes + p_no)).tolist()):
                    out[i] = value
                bar.update(len(rows))
        return out

    def _onnx(self, prompts: list[Prompt]) -> list[float]:
        tokenizer = self.backend.tokenizer
        yes, no = _word_tokens(tokenizer, "yes"), _word_tokens(tokenizer, "no")
        out = []
        for logits in tqdm(self.backend.first_token_logits(prompts), total=len(prompts), desc="score: llm",
                           unit="pair", mininterval=1.0):
            p = torch.from_numpy(logits).softmax(-1)
            out.append(float(p[yes].sum() / (p[yes].sum() + p[no].sum())))
        return out

    def _vllm(self, prompts: list[Prompt]) -> list[float]:
        backend = self.backend
        texts = [prompt_text(backend.tokenizer, backend.chat, p) for p in prompts]
        params = backend.params(max_tokens=1, temperature=0.0, logprobs=20)
        out = []
        for result in backend.llm.generate(texts, params):
            top = result.outputs[0].logprobs[0] if result.outputs[0].logprobs else {}
            out.append(yes_no_probability({lp.decoded_token or "": lp.logprob for lp in top.values()}))
        return out


def _word_tokens(tokenizer, word: str) -> list[int]:
    """Token ids that stand for `word` as an answer's first token: "yes", " yes", "Yes", " Yes"."""
    ids = set()
    for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()):
        pieces = tokenizer.encode(variant, add_special_tokens=False)
        if len(pieces) == 1:
            ids.add(pieces[0])
    if not ids:
        raise EmbedtuneError(f"teacher.kind=llm: the generator's tokenizer has no single token for '{word}'")
    return sorted(ids)


def make_teacher(cfg: TeacherConfig):
    if cfg.kind == "cross_encoder":
        return CrossEncoderTeacher(cfg)
    if cfg.kind == "biencoder":
        return BiencoderTeacher(cfg)
    if cfg.kind == "llm":
        return LLMTeacher(cfg)
    raise EmbedtuneError(f"teacher.kind={cfg.kind} is not one of {', '.join(KINDS[1:])}")
