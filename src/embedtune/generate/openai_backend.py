"""Any OpenAI-compatible chat endpoint (a hosted API, a vLLM or llama.cpp server), through http_retry.py:
async requests with bounded concurrency, retries with exponential backoff on 429/5xx/timeouts/broken bodies,
the API key read from the environment variable named by `generator.api_key_env` at request time."""

from __future__ import annotations

from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import Answer, answer_of, yes_no_probability
from embedtune.generate.prompts import Prompt
from embedtune.http_retry import bearer_headers, post_all


class OpenAIBackend:
    chat = True

    def __init__(self, cfg):
        if not cfg.api_base:
            raise EmbedtuneError("generator.backend=openai needs generator.api_base, "
                                 "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1")
        self.cfg = cfg
        self.url = cfg.api_base.rstrip("/") + "/chat/completions"
        self.name = cfg.model

    def _body(self, prompt: Prompt, seed: int) -> dict:
        """The server applies the model's chat template; a prefill goes as a final assistant message, which
        llama.cpp's server and vLLM (with continue_final_message) continue."""
        messages = list(prompt.messages)
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": prompt.max_new_tokens,
                "temperature": self.cfg.temperature, "seed": seed, "stop": ["\n"]}
        if prompt.prefill:
            messages.append({"role": "assistant", "content": prompt.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        if self.cfg.temperature > 0:
            body["top_p"] = self.cfg.top_p
        return body

    def _post(self, bodies: list[dict], parse, desc: str) -> list:
        return post_all(self.url, bodies, bearer_headers(self.cfg.api_key_env), self.cfg,
                        lambda answer, i: parse(answer["choices"][0]), desc, "query")

    def generate(self, prompts: list[Prompt], seed: int = 0) -> list[Answer]:
        def parse(choice) -> Answer:
            return answer_of(choice["message"]["content"] or "", choice.get("finish_reason") == "length")
        return self._post([self._body(p, seed + i) for i, p in enumerate(prompts)], parse, "generate")

    def yes_no_probabilities(self, prompts: list[Prompt]) -> list[float]:
        """P(yes) among yes/no of each answer's first token, from the server's top logprobs (a teacher)."""
        def parse(choice) -> float:
            top = choice["logprobs"]["content"][0]["top_logprobs"]
            return yes_no_probability({t["token"]: float(t["logprob"]) for t in top})
        bodies = [{**self._body(p, 0), "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
                  for p in prompts]
        return self._post(bodies, parse, "score: llm")
