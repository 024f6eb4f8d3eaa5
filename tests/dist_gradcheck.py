"""One training step through the trainer's own pieces, for tests/test_gradcache.py.

Run under `accelerate launch` (1 or 2 processes; DDP or DeepSpeed ZeRO-1/2/3) or imported for the
single-process full-batch reference. The step uses SGD with lr=1 and no clipping, so each parameter
moves by exactly minus its gradient; rank 0 writes the parameters after the step. `--cases FILE` runs several
cases (models, LoRA, pooling) one after another in the same launch, each with its own Accelerator and output
folder: one process start for many checks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from embedtune.loss import LossConfig, ScoredBatch, local_loss_sum
from embedtune.model import Encoder, ModelConfig, PeftConfig
from embedtune.train import TrainConfig, TrainData

WORDS = "gene protein heart lung kidney liver brain blood cell disease fever pain river city".split()


def toy_data(cfg: TrainConfig, world: int = 1, teacher: bool = False) -> TrainData:
    """10 rows with texts of many lengths, 0 to 3 hard negatives each, and two queries sharing a passage;
    with `teacher`, teacher scores for every positive and negative (as the score stage writes them)."""
    n = 10
    passages = {f"p{i}": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + 4 * i)) for i in range(n)}
    queries = {f"q{i}": " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(1 + i % 4)) for i in range(n)}
    rows = [{"query_id": f"q{i}", "passage_id": "p3" if i == 7 else f"p{i}",
             "negative_ids": [f"p{(i + k) % n}" for k in range(1, 1 + i % 4)]} for i in range(n)]
    if teacher:
        for i, r in enumerate(rows):
            r["positive_teacher_score"] = 0.9 - 0.02 * i
            r["negative_teacher_scores"] = [0.1 * ((i + k) % 7) for k in range(len(r["negative_ids"]))]
    return TrainData(rows, queries, passages, cfg, world)


DECODER = {"pooling": "last", "padding_side": "left"}  # decoders: last-token pooling of left-padded texts


def build_encoder(model_dir: str, lora: bool, decoder: bool = False) -> Encoder:
    torch.manual_seed(0)
    # float32 weights whatever the device (dtype auto would load bf16 on a bf16 GPU): the reference is fp32, and
    # bf16 arithmetic is what --precision bf16 (autocast) asks for
    encoder = Encoder.load(ModelConfig(name=model_dir, passage_max_length=64, dtype="float32",
                                       **(DECODER if decoder else {"pooling": "mean"})))
    if lora:  # BERT: two projections; decoders: the default, every attention and MLP projection
        targets = None if decoder else ["query", "value"]
        encoder.apply_lora(PeftConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=targets))
        with torch.no_grad():  # LoRA starts with B = 0 (no gradient for A): give B values so both learn
            for name, p in encoder.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return encoder


def loss_config(matryoshka: bool, symmetric: bool = True, distill: bool = False) -> LossConfig:
    weights = {"margin_mse_weight": 2.0, "kl_weight": 0.5, "kl_temperature": 0.2} if distill else {}
    return LossConfig(temperature=0.1, symmetric=symmetric, matryoshka_dims=[32, 16, 8] if matryoshka else None,
                      **weights)


def reference_grads(model_dir: str, lora: bool, matryoshka: bool, batch_size: int,
                    decoder: bool = False, distill: bool = False) -> tuple[dict, dict, float]:
    """(initial params, their gradients, loss): one process, whole global batch, one forward per side."""
    encoder = build_encoder(model_dir, lora, decoder).train()
    batch = toy_data(TrainConfig(batch_size=batch_size, hard_negatives=2), teacher=distill).batch(0)
    q = encoder(encoder.tokenize(batch["queries"], "query"))
    c = encoder(encoder.tokenize(batch["candidates"], "passage"))
    scored = ScoredBatch.local(q, c, batch["query_pids"], batch["candidate_pids"])
    scored.teacher, scored.teacher_columns = batch.get("teacher"), batch.get("teacher_columns")
    loss_sum = local_loss_sum(scored, loss_config(matryoshka, distill=distill), normalize=True)
    total = scored.total_queries
    (loss_sum / total).backward()
    params = {n: p.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
             for n, p in encoder.named_parameters() if p.requires_grad}
    return params, grads, float(loss_sum.detach() / total)


def compare(out: Path, model_dir: str, lora: bool = False, matryoshka: bool = False, decoder: bool = False,
            distill: bool = False) -> dict:
    """How far the step written in `out` is from the fp32 full-batch reference: relative error of the
    whole update vector, largest element error, loss difference, reference gradient norm."""
    from safetensors.torch import load_file

    params, grads, loss = reference_grads(model_dir, lora, matryoshka, 8, decoder, distill)
    after = load_file(str(Path(out) / "after.safetensors"))
    info = json.loads((Path(out) / "info.json").read_text())
    if set(after) != set(params):
        raise AssertionError(f"parameter names differ: {sorted(set(after) ^ set(params))[:5]}")
    if info.get("start_rounded_to_bf16"):
        params = {n: p.bfloat16().float() for n, p in params.items()}
    diff = {n: params[n] - after[n] - grads[n] for n in params}
    norm = sum(float(g.pow(2).sum()) for g in grads.values()) ** 0.5
    return {"relative": sum(float(d.pow(2).sum()) for d in diff.values()) ** 0.5 / norm,
            "max_element": max(float(d.abs().max()) for d in diff.values()),
            "loss_diff": abs(info["loss"] - loss), "grad_norm": norm, "info": info, "grads": grads,
            "params": params}


def zero_config(accelerator) -> dict:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin.deepspeed_config.get("zero_optimization", {}) if plugin is not None else {}


def run_case(args):
    from accelerate.utils import DistributedType
    from safetensors.torch import save_file

    from embedtune.accel import fill_bucket_sizes, make_accelerator, zero_stage
    from embedtune.gradcache import contrastive_step

    cfg = TrainConfig(batch_size=args.batch, hard_negatives=2, chunk_size=args.chunk, grad_cache=not args.no_cache,
                      grad_clip=1e6, mixed_precision=args.precision)
    accelerator = make_accelerator(cfg)
    encoder = build_encoder(args.model, args.lora, args.decoder)
    if args.checkpointing:
        encoder.enable_gradient_checkpointing()
    fill_bucket_sizes(accelerator, encoder.backbone.config.hidden_size)
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=1.0)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)
    encoder.train()

    data = toy_data(cfg, accelerator.num_processes, teacher=args.distill)
    loss, tokens = contrastive_step(encoder, data.batch(0, accelerator.process_index),
                                    loss_config(args.matryoshka, distill=args.distill),
                                    accelerator, cfg.chunk_size, cfg.grad_cache, normalize=True)
    optimizer.step()
    optimizer.zero_grad()
    unwrapped = accelerator.unwrap_model(encoder)
    named = [(n, p) for n, p in unwrapped.named_parameters() if p.requires_grad]
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:  # the optimizer's fp32 master weights (the module's own may be bf16 copies or partitions)
        from deepspeed.utils import safe_get_full_fp32_param

        after = {n: safe_get_full_fp32_param(p).float().cpu().clone() for n, p in named}
    else:
        after = {n: p.detach().float().cpu().clone() for n, p in named}
    if accelerator.is_main_process:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save_file(after, str(Path(args.out) / "after.safetensors"))
        info = {"loss": float(loss), "processes": accelerator.num_processes, "zero_stage": zero_stage(accelerator),
                "deepspeed": deepspeed, "distributed_type": str(accelerator.distributed_type),
                "offload": {k: v.get("device", "none") for k, v in zero_config(accelerator).items()
                            if k.startswith("offload_") and isinstance(v, dict)},
                "device": str(accelerator.device), "precision": args.precision,
                "backbone": type(getattr(unwrapped.backbone, "get_base_model", lambda: unwrapped.backbone)()).__name__, "pooling": unwrapped.pooling,
                "padding_side": unwrapped.tokenizer.padding_side,
                # DeepSpeed bf16 casts the module to bf16 first: its fp32 masters start from rounded weights
                "start_rounded_to_bf16": deepspeed and args.precision == "bf16"}
        (Path(args.out) / "info.json").write_text(json.dumps(info))
    accelerator.wait_for_everyone()
    del encoder, optimizer, unwrapped  # the next case builds its own engine
    return accelerator


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out")
    ap.add_argument("--cases", help="a JSON list of argument lists, one case each")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--decoder", action="store_true", help="last-token pooling, left padding")
    ap.add_argument("--matryoshka", action="store_true")
    ap.add_argument("--distill", action="store_true", help="MarginMSE + listwise KL on teacher scores, with InfoNCE")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--chunk", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="no")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cases = [parse(c) for c in json.loads(Path(args.cases).read_text())] if args.cases else [args]
    for case in cases:
        accelerator = run_case(case)
    accelerator.end_training()
    if torch.distributed.is_initialized():  # gloo's threads left running at exit can abort a rank
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
