"""What the encoder reads besides the text: instruction prefixes, the EOS token that last-token pooling reads,
and the prefix length that mean pooling may leave out. The rules follow sentence-transformers' own, so the
exported folder embeds exactly as the trained encoder did."""

from __future__ import annotations

from embedtune.errors import EmbedtuneError


def render_prefix(template: str, task: str, field: str) -> str:
    """A model.query_prefix / passage_prefix with model.task filled in, e.g.
    "Instruct: {task}\\nQuery: " -> "Instruct: Given a symptom, find its definition\\nQuery: "."""
    if "{task}" in template and not task:
        raise EmbedtuneError(f"model.{field}={template!r} has a {{task}} slot but model.task is empty; "
                             "set model.task=\"...\" (the instruction)")
    return template.replace("{task}", task)


def ends_with_eos(tokenizer) -> bool:
    """Does the tokenizer itself end a text with its EOS token (Qwen3-Embedding's does; most LM tokenizers
    do not)?"""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[-1] == eos


def ensure_eos(tokenizer, model_name: str) -> None:
    """Make the tokenizer end every text with EOS, inside its own post-processor: truncation keeps room for
    it, and the saved tokenizer (checkpoints, the exported sentence-transformers folder) does the same."""
    if ends_with_eos(tokenizer):
        return
    if tokenizer.eos_token is None:
        raise EmbedtuneError(f"model.append_eos: the tokenizer of {model_name} has no EOS token; "
                             "set model.append_eos=false")
    # not through `add_eos_token`: transformers 5 rebuilds the template from add_bos_token/add_eos_token, which
    # loses a BOS the tokenizer.json template adds without add_bos_token set
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise EmbedtuneError(f"model.append_eos: the tokenizer of {model_name} is not a fast tokenizer, "
                             "whose post-processor could append EOS; set model.append_eos=false")
    backend.post_processor = _with_eos(backend, tokenizer.eos_token, tokenizer.eos_token_id)
    if not ends_with_eos(tokenizer):
        raise EmbedtuneError(f"model.append_eos: could not make the tokenizer of {model_name} append EOS; "
                             "set model.append_eos=false")


def _with_eos(backend, eos: str, eos_id: int):
    """The backend's post-processor extended to end each sequence with EOS: a template (BOS $A) gains EOS after
    $A; any other processor (GPT-2's ByteLevel, none) is followed by a template that appends it."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(backend.to_str())
    current = spec.get("post_processor")
    eos_piece = {"SpecialToken": {"id": eos, "type_id": 0}}
    appending = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}, eos_piece],
                 "pair": [{"Sequence": {"id": "A", "type_id": 0}}, eos_piece,
                          {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": eos, "type_id": 1}}],
                 "special_tokens": {}}
    template = current if current and current.get("type") == "TemplateProcessing" else None
    if template is None and current and current.get("type") == "Sequence":
        template = next((p for p in current["processors"] if p.get("type") == "TemplateProcessing"), None)
    if template is not None:  # add EOS after each sequence of the existing template
        for key in ("single", "pair"):
            pieces, out = template[key], []
            for piece in pieces:
                out.append(piece)
                if "Sequence" in piece:
                    out.append({"SpecialToken": {"id": eos, "type_id": piece["Sequence"]["type_id"]}})
            template[key] = out
        target = template
    elif current is None:
        spec["post_processor"] = target = appending
    elif current.get("type") == "Sequence":
        current["processors"].append(appending)
        target = appending
    else:
        spec["post_processor"] = {"type": "Sequence", "processors": [current, appending]}
        target = appending
    target.setdefault("special_tokens", {})[eos] = {"id": eos, "ids": [eos_id], "tokens": [eos]}
    return Tokenizer.from_str(json.dumps(spec)).post_processor


def prompt_length(tokenizer, prefix: str) -> int:
    """Tokens of `prefix` at the start of a tokenized text, counted as sentence-transformers counts them for
    `include_prompt=False`: the prefix tokenized alone, less a trailing special token (EOS/SEP)."""
    if not prefix:
        return 0
    ids = tokenizer(prefix)["input_ids"]
    if ids and ids[-1] in set(tokenizer.all_special_ids):
        return len(ids) - 1
    return len(ids)
