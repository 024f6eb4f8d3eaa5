"""The exported folder's README.md (model card) and the training dataset's description: what the model is, how to
call and serve it, its eval table and its training, from the run's config and the stages' manifests."""

from __future__ import annotations

from typing import Optional

from embedtune.config import Config


def model_card(cfg: Config, pairs: dict, passages: dict, train: dict, eval_table: Optional[str]) -> str:
    """README.md of the exported folder, from the stages' manifests (eval's table when eval ran first)."""
    table = eval_table or "(no eval run before export)\n"
    return (f"---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
            f"tags: [embedtune, sentence-transformers, feature-extraction]\n---\n\n"
            f"# {cfg.run_name}: a {cfg.corpus.name} embedding model\n\n"
            f"Fine-tuned from `{cfg.model.name}` by embedtune on {pairs['counts']['train']:,} synthetic "
            f"query-passage pairs written by `{cfg.generator.model}` for the corpus `{cfg.corpus.name}` "
            f"({passages['counts']['passages']:,} passages).\n\n"
            f"```python\nfrom sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer(\"path/to/this/folder\")\n"
            f"q = model.encode([\"...\"], prompt_name=\"query\")\np = model.encode([\"...\"], prompt_name=\"passage\")\n```\n\n"
            f"A passage with a title was encoded as `title + \" \" + text` in training and evaluation; encode "
            f"yours the same way. Queries and passages are read up to {cfg.model.passage_max_length} tokens "
            f"(training cut queries at {cfg.model.query_max_length}).\n\n"
            + ("ONNX: `onnx/sentence_embedding.onnx` takes `input_ids` and `attention_mask` (from this folder's "
               "tokenizer, with the query/passage prompt prepended) and returns the sentence embedding, pooling "
               "and normalisation included (onnxruntime parity checked at export).\n\n" if cfg.export.onnx else "")
            + "## Serving\n\nBehind an OpenAI-compatible embeddings endpoint (dynamic batching, ONNX Runtime on CPU, "
              "PyTorch on GPU; `GET /v1/models` names the weights by their content hash):\n\n"
              "```bash\nembedtune serve serve.model=path/to/this/folder serve.port=8000\n"
              "curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\\n"
              "    -d '{\"input\": [\"...\"], \"input_type\": \"query\"}'   # input_type passage for documents\n```\n\n"
            + f"## Evaluation\n\n{table}\n"
            f"## Training\n\nInfoNCE (temperature {cfg.loss.temperature}), batch {cfg.train.batch_size}, "
            f"{cfg.train.hard_negatives} hard negative(s) per query, lr {cfg.train.lr}, "
            f"{'LoRA r=%d' % cfg.peft.r if cfg.peft.enabled else 'full fine-tuning'}, "
            f"{'gradient caching (chunks of %d), ' % cfg.train.chunk_size if cfg.train.grad_cache else ''}"
            f"{train['steps']} steps.\n")


def dataset_description(cfg: Config) -> str:
    """The training pairs' dataset card's first line (export.dataset=true)."""
    return (f"Made by embedtune from the corpus `{cfg.corpus.name}` ({cfg.corpus.domain}): queries written by "
            f"`{cfg.generator.model}`, hard negatives mined with `{cfg.model.name}`.")
