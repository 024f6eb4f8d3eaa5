"""POSTs to OpenAI-compatible servers (the generator's chat endpoint, embedding endpoints under eval): async,
at most `concurrency` requests in flight, retries with exponential backoff and jitter on 429/5xx, timeouts,
dropped connections and malformed bodies. An API key is read from the environment variable a setting names,
at request time: never stored on a config, logged or written anywhere."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any, Callable, Protocol

from tqdm import tqdm

from embedtune.errors import EmbedtuneError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class RetryPolicy(Protocol):
    """The settings these requests read (GeneratorConfig and BaselineConfig have them)."""
    concurrency: int
    max_retries: int
    timeout_s: float
    backoff_s: float
    backoff_max_s: float


def bearer_headers(api_key_env: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(api_key_env) if api_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def post_with_retries(client, url: str, body: dict, headers: dict, policy: RetryPolicy,
                            limit: asyncio.Semaphore, parse: Callable[[dict], Any]) -> Any:
    """POST `body` until a 200 whose JSON `parse` reads (a KeyError, IndexError, TypeError or ValueError there
    means a malformed body, retried); another 4xx is an error at once, naming the URL and the server's words."""
    import httpx

    problem = ""
    for attempt in range(policy.max_retries + 1):
        if attempt:
            delay = min(policy.backoff_max_s, policy.backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: retries do not march in step
        async with limit:
            try:
                response = await client.post(url, json=body, headers=headers)
            except httpx.TimeoutException:
                problem = f"timed out after {policy.timeout_s}s"
                continue
            except httpx.TransportError as e:
                problem = f"connection failed ({type(e).__name__})"
                continue
        if response.status_code in RETRY_STATUS:
            problem = f"HTTP {response.status_code}"
            continue
        if response.status_code != 200:
            raise EmbedtuneError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            return parse(response.json())
        except (ValueError, KeyError, IndexError, TypeError):
            problem = "malformed response body"
    raise EmbedtuneError(f"{url}: gave up after {policy.max_retries + 1} attempts ({problem})")


def post_all(url: str, bodies: list[dict], headers: dict, policy: RetryPolicy, parse: Callable[[dict, int], Any],
             desc: str, unit: str, sizes: list[int] | None = None) -> list:
    """Every body POSTed (at most policy.concurrency at once), `parse(answer, i)` of each body's answer in order,
    with a progress bar counting `sizes[i]` units per body (1 each by default)."""
    import httpx

    async def run_all() -> list:
        limit = asyncio.Semaphore(policy.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(policy.timeout_s)) as client:
            with tqdm(total=sum(sizes) if sizes else len(bodies), desc=desc, unit=unit, mininterval=2.0) as bar:
                async def one(i: int, body: dict):
                    answer = await post_with_retries(client, url, body, headers, policy, limit,
                                                     lambda reply: parse(reply, i))
                    bar.update(sizes[i] if sizes else 1)
                    return answer
                return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return asyncio.run(run_all())
