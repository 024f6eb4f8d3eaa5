"""Any OpenAI-compatible chat endpoint (a hosted API, a vLLM or llama.cpp server): async requests with
bounded concurrency, retries with exponential backoff on 429/5xx/timeouts/broken bodies.

The API key is read from the environment variable named by `generator.api_key_env` at request time; it is
never stored on the config, logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import os
import random

from tqdm import tqdm

from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import Answer, answer_of
from embedtune.generate.prompts import Prompt

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    chat = True

    def __init__(self, cfg):
        if not cfg.api_base:
            raise EmbedtuneError("generator.backend=openai needs generator.api_base, "
                                 "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1")
        self.cfg = cfg
        self.url = cfg.api_base.rstrip("/") + "/chat/completions"
        self.name = cfg.model

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

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

    async def _one(self, client, limit: asyncio.Semaphore, body: dict, parse):
        """POST `body` with retries; `parse(choice)` reads the first choice (a KeyError etc.: malformed)."""
        import httpx

        problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                delay = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: retries do not march in step
            async with limit:
                try:
                    response = await client.post(self.url, json=body, headers=self._headers())
                except httpx.TimeoutException:
                    problem = f"timed out after {self.cfg.timeout_s}s"
                    continue
                except httpx.TransportError as e:
                    problem = f"connection failed ({type(e).__name__})"
                    continue
            if response.status_code in RETRY_STATUS:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise EmbedtuneError(f"{self.url}: HTTP {response.status_code}: {response.text[:200]}")
            try:
                return parse(response.json()["choices"][0])
            except (ValueError, KeyError, IndexError, TypeError):
                problem = "malformed response body"
        raise EmbedtuneError(f"{self.url}: gave up after {self.cfg.max_retries + 1} attempts ({problem})")

    async def _all(self, bodies: list[dict], parse, desc: str) -> list:
        import httpx

        limit = asyncio.Semaphore(self.cfg.concurrency)
        timeout = httpx.Timeout(self.cfg.timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as client:
            with tqdm(total=len(bodies), desc=desc, unit="query", mininterval=2.0) as bar:
                async def run(body: dict):
                    answer = await self._one(client, limit, body, parse)
                    bar.update(1)
                    return answer
                return await asyncio.gather(*(run(b) for b in bodies))

    def generate(self, prompts: list[Prompt], seed: int = 0) -> list[Answer]:
        def parse(choice) -> Answer:
            return answer_of(choice["message"]["content"] or "", choice.get("finish_reason") == "length")
        return asyncio.run(self._all([self._body(p, seed + i) for i, p in enumerate(prompts)], parse, "generate"))

    def yes_no_probabilities(self, prompts: list[Prompt]) -> list[float]:
        """P(yes) among yes/no of each answer's first token, from the server's top logprobs (a teacher)."""
        from embedtune.teacher import yes_no_probability

        def parse(choice) -> float:
            top = choice["logprobs"]["content"][0]["top_logprobs"]
            return yes_no_probability({t["token"]: float(t["logprob"]) for t in top})
        bodies = [{**self._body(p, 0), "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
                  for p in prompts]
        return asyncio.run(self._all(bodies, parse, "score: llm"))
