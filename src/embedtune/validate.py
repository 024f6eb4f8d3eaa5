"""Settings that are each well-typed (Hydra checks types and key names) but out of range or impossible
together: all of them named at once, before any stage reads, loads or writes anything."""

from __future__ import annotations

from embedtune.backbone import ATTENTIONS, ATTN_IMPLEMENTATIONS, DTYPES
from embedtune.baselines import RESERVED
from embedtune.config import Config
from embedtune.errors import raise_if_invalid
from embedtune.generate.runner import generator_problems


def problems(cfg: Config) -> list[str]:
    found: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    t, loss, mining, filt, corpus, peft = cfg.train, cfg.loss, cfg.mining, cfg.filter, cfg.corpus, cfg.peft
    need(loss.temperature > 0, f"loss.temperature={loss.temperature} must be > 0 (scores are divided by it)")
    need(all(d > 0 for d in loss.matryoshka_dims or []),
         f"loss.matryoshka_dims={loss.matryoshka_dims} must be positive dimensions")
    need(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
    need(t.chunk_size >= 1, f"train.chunk_size={t.chunk_size} must be >= 1")
    need(not (t.grad_cache and t.chunk_size > t.batch_size),
         f"train.chunk_size={t.chunk_size} is larger than train.batch_size={t.batch_size}: with train.grad_cache=true "
         "a chunk would hold the whole batch and caching saves nothing; lower train.chunk_size or set grad_cache=false")
    need(t.hard_negatives >= 0, f"train.hard_negatives={t.hard_negatives} must be >= 0")
    need(t.hard_negatives <= mining.num_negatives,
         f"train.hard_negatives={t.hard_negatives} is more than mining.num_negatives={mining.num_negatives} mined per query")
    need(t.lr > 0, f"train.lr={t.lr} must be > 0")
    need(0 <= t.warmup_ratio < 1, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
    need(t.epochs > 0 or t.max_steps is not None, f"train.epochs={t.epochs} must be > 0 (or set train.max_steps)")
    need(t.grad_clip > 0, f"train.grad_clip={t.grad_clip} must be > 0")
    need(t.init in ("base", "previous"), f"train.init={t.init} is not base or previous")
    need(0 <= t.replay <= 1, f"train.replay={t.replay} must be in [0, 1]")
    need(t.mixed_precision in ("auto", "no", "bf16", "fp16"),
         f"train.mixed_precision={t.mixed_precision} is not one of auto, no, bf16, fp16")
    for name in ("max_steps", "save_every", "eval_every", "halt_at_step"):
        value = getattr(t, name)
        need(value is None or value >= 1, f"train.{name}={value} must be >= 1 (or null)")
    need(t.keep_checkpoints >= 1, f"train.keep_checkpoints={t.keep_checkpoints} must be >= 1")
    need(mining.num_negatives >= 0, f"mining.num_negatives={mining.num_negatives} must be >= 0")
    need(mining.top_k > mining.num_negatives + mining.skip_top,
         f"mining.top_k={mining.top_k} must exceed mining.num_negatives + mining.skip_top "
         f"({mining.num_negatives} + {mining.skip_top}): the positive is among the candidates too")
    need(mining.margin is None or 0 < mining.margin <= 1, f"mining.margin={mining.margin} must be in (0, 1] or null")
    if mining.sample_ranks is not None:
        ranks = list(mining.sample_ranks)
        need(len(ranks) == 2 and 0 <= ranks[0] < ranks[1] <= mining.top_k,
             f"mining.sample_ranks={ranks} must be [a, b] with 0 <= a < b <= mining.top_k={mining.top_k}")
    need(mining.index in ("auto", "exact", "ivf", "hnsw"), f"mining.index={mining.index} is not one of auto, exact, ivf, hnsw")
    need(all(v is None or v >= 1 for v in (mining.ivf_probe, mining.ivf_lists)) and mining.ivf_refine >= 1,
         f"mining.ivf_lists={mining.ivf_lists}, mining.ivf_probe={mining.ivf_probe} and "
         f"mining.ivf_refine={mining.ivf_refine} must be >= 1 (lists and probe: or null)")
    need(mining.hnsw_m >= 2 and mining.hnsw_ef_search >= 1 and mining.hnsw_ef_construction >= 1,
         f"mining.hnsw_m={mining.hnsw_m} must be >= 2 and mining.hnsw_ef_search/ef_construction >= 1")
    need(mining.recall_sample >= 1 and mining.query_block >= 1,
         f"mining.recall_sample={mining.recall_sample} and mining.query_block={mining.query_block} must be >= 1")
    need(0 <= filt.dev_fraction < 1 and 0 <= filt.test_fraction < 1 and filt.dev_fraction + filt.test_fraction < 1,
         f"filter.dev_fraction={filt.dev_fraction} + filter.test_fraction={filt.test_fraction} must be below 1 "
         "(each in [0, 1)): training needs documents too")
    need(filt.roundtrip_margin is None or filt.roundtrip_margin >= 0,
         f"filter.roundtrip_margin={filt.roundtrip_margin} must be >= 0 (a cosine gap to the best passage) or null")
    need(filt.roundtrip_twin_cosine is None or 0 < filt.roundtrip_twin_cosine <= 1,
         f"filter.roundtrip_twin_cosine={filt.roundtrip_twin_cosine} must be in (0, 1] or null")
    need((filt.roundtrip_margin is None and filt.roundtrip_twin_cosine is None) or bool(filt.roundtrip_top_k),
         "filter.roundtrip_margin and filter.roundtrip_twin_cosine refine the round trip: set filter.roundtrip_top_k too")
    need(corpus.format in ("hpo", "files", "jsonl", "parquet", "beir", "hf"),
         f"corpus.format={corpus.format} is not one of hpo, files, jsonl, parquet, beir, hf")
    need(corpus.format == "hpo" or bool(corpus.path), f"corpus.format={corpus.format} needs corpus.path")
    need(corpus.duplicate_ids in ("error", "keep_first", "suffix"),
         f"corpus.duplicate_ids={corpus.duplicate_ids} is not one of error, keep_first, suffix")
    need(corpus.chunk_tokens >= 8, f"corpus.chunk_tokens={corpus.chunk_tokens} must be >= 8")
    need(0 <= corpus.chunk_overlap < corpus.chunk_tokens,
         f"corpus.chunk_overlap={corpus.chunk_overlap} must be in [0, corpus.chunk_tokens={corpus.chunk_tokens})")
    need(cfg.eval.precision in ("auto", "bf16", "fp32"), f"eval.precision={cfg.eval.precision} is not one of auto, bf16, fp32")
    teacher = cfg.teacher
    need(teacher.kind in ("none", "cross_encoder", "biencoder", "llm"),
         f"teacher.kind={teacher.kind} is not one of none, cross_encoder, biencoder, llm")
    need(teacher.kind not in ("cross_encoder", "biencoder") or bool(teacher.model),
         f"teacher.kind={teacher.kind} needs teacher.model (a local folder or hub id)")
    need(teacher.precision in ("auto", "bf16", "fp32"), f"teacher.precision={teacher.precision} is not one of auto, bf16, fp32")
    for key in ("infonce_weight", "margin_mse_weight", "kl_weight"):
        need(getattr(loss, key) >= 0, f"loss.{key}={getattr(loss, key)} must be >= 0")
    need(loss.infonce_weight > 0 or loss.distills, "loss.infonce_weight=0 with no distillation weight: nothing to learn")
    need(loss.kl_temperature is None or loss.kl_temperature > 0,
         f"loss.kl_temperature={loss.kl_temperature} must be > 0 (or null: loss.temperature)")
    need(not loss.distills or teacher.enabled,
         "loss.margin_mse_weight / loss.kl_weight need teacher scores: choose a teacher (teacher=biencoder "
         "teacher.model=..., teacher=cross_encoder, teacher=llm), which `embedtune score` runs")
    need(not (loss.distills and t.hard_negatives == 0),
         "loss.margin_mse_weight / loss.kl_weight compare each query's positive with its hard negatives: "
         "train.hard_negatives must be >= 1")
    alpha = cfg.export.merge_alpha
    need(alpha in (None, "auto") or _fraction(alpha),
         f"export.merge_alpha={alpha} must be null, auto, or a number in [0, 1] (the tuned weights' share)")
    found += generator_problems(cfg.generator) + serve_problems(cfg.serve) + baseline_problems(cfg.eval.baselines)
    if peft.enabled:
        need(peft.r >= 1, f"peft.r={peft.r} must be >= 1")
        need(peft.target_modules is None or bool(peft.target_modules),
             "peft.target_modules is empty: LoRA needs modules to adapt (null: every linear layer of the blocks)")
    model = cfg.model
    for key, value, allowed in (("attention", model.attention, ATTENTIONS),
                                ("attn_implementation", model.attn_implementation, ATTN_IMPLEMENTATIONS),
                                ("dtype", model.dtype, DTYPES), ("padding_side", model.padding_side,
                                                                 ("auto", "left", "right"))):
        need(value in allowed, f"model.{key}={value} is not one of {', '.join(allowed)}")
    for key in ("query_prefix", "passage_prefix"):
        need("{task}" not in getattr(model, key) or bool(model.task),
             f"model.{key} has a {{task}} slot but model.task is empty: set model.task=\"...\"")
    return found


def _fraction(value) -> bool:
    try:
        return 0 <= float(value) <= 1
    except (TypeError, ValueError):
        return False


def baseline_problems(baselines) -> list[str]:
    found, names = [], [b.name for b in baselines]
    for i, b in enumerate(baselines):
        at = f"eval.baselines[{i}]"
        if not b.name or b.name in RESERVED or names.count(b.name) > 1:
            found.append(f"{at}.name={b.name!r} must be set, unique, and none of {', '.join(RESERVED)} (eval's own rows)")
        if not (b.model or b.url):
            found.append(f"{at} ({b.name}) needs a model (a sentence-transformers model run here) or a url (an "
                         "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1)")
        if b.url and not b.url.startswith(("http://", "https://")):
            found.append(f"{at}.url={b.url} must start with http:// or https://")
        if min(b.batch_size, b.concurrency) < 1 or b.dimensions < 0 or b.max_retries < 0 or b.price_per_million_tokens < 0:
            found.append(f"{at} ({b.name}): batch_size and concurrency must be >= 1; dimensions, max_retries and "
                         "price_per_million_tokens >= 0")
    return found


def serve_problems(serve) -> list[str]:
    found = []
    if serve.backend not in ("auto", "onnx", "torch"):
        found.append(f"serve.backend={serve.backend} is not one of auto, onnx, torch")
    if serve.precision not in ("auto", "bf16", "fp32"):
        found.append(f"serve.precision={serve.precision} is not one of auto, bf16, fp32")
    if not 0 <= serve.port <= 65535:
        found.append(f"serve.port={serve.port} must be in 0..65535 (0: any free port)")
    for key in ("max_batch", "max_queue", "max_inputs", "max_request_bytes"):
        if getattr(serve, key) < 1:
            found.append(f"serve.{key}={getattr(serve, key)} must be >= 1")
    if serve.batch_tokens < 0:
        found.append(f"serve.batch_tokens={serve.batch_tokens} must be >= 0 (0: chosen for the device)")
    if serve.max_wait_ms < 0 or serve.drain_timeout_s < 0 or serve.threads < 0:
        found.append(f"serve.max_wait_ms={serve.max_wait_ms}, serve.drain_timeout_s={serve.drain_timeout_s} and "
                     f"serve.threads={serve.threads} must be >= 0")
    if serve.max_inputs > serve.max_queue:
        found.append(f"serve.max_inputs={serve.max_inputs} is more than serve.max_queue={serve.max_queue}: a full "
                     "request would never fit in the queue")
    return found


def check_config(cfg: Config) -> None:
    raise_if_invalid(problems(cfg))
