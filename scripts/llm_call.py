#!/usr/bin/env python3
"""Call an LLM provider's HTTP API with the standard library only: the path of last resort.

The executor runs this script when a provider cannot serve in-process (its SDK is missing
or broken, or it failed after the provider layer gave up). It must keep working when every
optional package is absent, so it imports nothing outside the standard library.

Protocol: one JSON object on stdin::

    {"provider": "openai-gpt", "model": "gpt-4o-mini", "system": "...",
     "messages": [{"role": "user", "content": "..."}], "max_tokens": 256,
     "temperature": 0.2, "timeout_s": 60}

and one JSON object on stdout: ``{"output", "model", "finish_reason", "usage":
{"input_tokens", "output_tokens"}}`` on success (exit 0), or ``{"error": {"type",
"message"}}`` with exit status 1. Keys come from the environment only (ANTHROPIC_API_KEY,
OPENAI_API_KEY, GOOGLE_API_KEY or GEMINI_API_KEY, HF_TOKEN), never from stdin or argv;
base URLs from ANTHROPIC_BASE_URL, OPENAI_BASE_URL, OLLAMA_HOST, ORCHESTRA_LMSTUDIO_URL,
ORCHESTRA_GEMINI_BASE_URL and ORCHESTRA_HF_BASE_URL. An error message never carries those
keys: an error body is masked before it is cut to 2,000 characters (a cut key would no
longer be recognized downstream).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

Json = dict[str, Any]
# The variables a key comes from (the executor passes only the provider's own).
KEY_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "HF_TOKEN",
)
ERROR_LIMIT = 2000  # characters of an error body passed on


def main() -> int:
    """Read the request, call the provider, print the answer."""
    try:
        request = json.loads(sys.stdin.read())
        call = PROVIDERS.get(request.get("provider", ""))
        if call is None:
            return fail("unsupported", f"no HTTP fallback for provider {request.get('provider')!r}")
        answer = call(request)
    except urllib.error.HTTPError as exc:
        # Masked before it is cut: a key cut in two no longer matches what masks it later.
        body = masked(exc.read().decode("utf-8", "replace"))[:ERROR_LIMIT]
        return fail(f"http_{exc.code}", body or str(exc))
    except (urllib.error.URLError, OSError) as exc:
        return fail("connection", str(getattr(exc, "reason", exc)))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return fail("bad_response", f"{type(exc).__name__}: {exc}")
    print(json.dumps(answer))
    return 0


def fail(kind: str, message: str) -> int:
    """Print an error object, without the keys we were given; return the failing status."""
    print(json.dumps({"error": {"type": kind, "message": masked(message)}}))
    return 1


def masked(text: str) -> str:
    """``text`` with every key this script was given replaced by ``[REDACTED]``."""
    for name in KEY_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:  # as the executor's own redaction: shorter is no key
            text = text.replace(secret, "[REDACTED]")
    return text


def post(url: str, body: Json, headers: dict[str, str], timeout: float) -> Json:
    """POST JSON, return the decoded JSON answer (no proxies: endpoints may be local)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    data = json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=data, headers={"Content-Type": "application/json", **headers}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        answer: Json = json.loads(response.read())
        return answer


def key(*names: str) -> str:
    """The first of these environment variables that is set."""
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    raise ValueError(f"set {' or '.join(names)}")


def anthropic(req: Json) -> Json:
    """Anthropic Messages API."""
    base = os.environ.get("ANTHROPIC_BASE_URL", "https://api.anthropic.com").rstrip("/")
    body: Json = {
        "model": req["model"],
        "max_tokens": req.get("max_tokens") or 1024,
        "messages": req["messages"],
    }
    if req.get("system"):
        body["system"] = req["system"]
    if req.get("temperature") is not None:
        body["temperature"] = req["temperature"]
    headers = {"x-api-key": key("ANTHROPIC_API_KEY"), "anthropic-version": "2023-06-01"}
    out = post(f"{base}/v1/messages", body, headers, req.get("timeout_s", 120))
    usage = out.get("usage", {})
    cached = (usage.get("cache_read_input_tokens") or 0) + (
        usage.get("cache_creation_input_tokens") or 0
    )
    reason = out.get("stop_reason")
    return {
        "output": "".join(b.get("text", "") for b in out["content"] if b.get("type") == "text"),
        "model": out.get("model", req["model"]),
        "finish_reason": _STOP_REASONS.get(str(reason), reason),
        "usage": {
            "input_tokens": usage["input_tokens"] + cached if "input_tokens" in usage else None,
            "output_tokens": usage.get("output_tokens"),
        },
    }


# Anthropic's stop reasons in the OpenAI terms the executor reads.
_STOP_REASONS = {"end_turn": "stop", "max_tokens": "length"}


def openai_compatible(base: str, api_key: str | None) -> Callable[[Json], Json]:
    """A caller for an OpenAI-compatible chat completions endpoint at ``base``."""

    def call(req: Json) -> Json:
        messages = [{"role": "system", "content": req["system"]}] if req.get("system") else []
        body: Json = {"model": req["model"], "messages": messages + req["messages"]}
        for field in ("max_tokens", "temperature"):
            if req.get(field) is not None:
                body[field] = req[field]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        out = post(f"{base.rstrip('/')}/chat/completions", body, headers, req.get("timeout_s", 120))
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return {
            "output": choice["message"].get("content") or "",
            "model": out.get("model", req["model"]),
            "finish_reason": choice.get("finish_reason"),
            "usage": {
                "input_tokens": usage.get("prompt_tokens"),
                "output_tokens": usage.get("completion_tokens"),
            },
        }

    return call


def openai(req: Json) -> Json:
    """OpenAI chat completions."""
    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    return openai_compatible(base, key("OPENAI_API_KEY"))(req)


def lmstudio(req: Json) -> Json:
    """LM Studio (or any OpenAI-compatible local server)."""
    base = os.environ.get("ORCHESTRA_LMSTUDIO_URL", "http://localhost:1234/v1")
    return openai_compatible(base, None)(req)


def ollama(req: Json) -> Json:
    """Ollama through its OpenAI-compatible endpoint."""
    host = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434").rstrip("/")
    host = host if "://" in host else f"http://{host}"
    return openai_compatible(f"{host}/v1", None)(req)


def huggingface(req: Json) -> Json:
    """Hugging Face's OpenAI-compatible router."""
    base = os.environ.get("ORCHESTRA_HF_BASE_URL", "https://router.huggingface.co/v1")
    return openai_compatible(base, key("HF_TOKEN"))(req)


def gemini(req: Json) -> Json:
    """Gemini generateContent (REST)."""
    base = os.environ.get(
        "ORCHESTRA_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com/v1beta"
    ).rstrip("/")
    contents = [
        {"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
        for m in req["messages"]
    ]
    body: Json = {"contents": contents, "generationConfig": {}}
    if req.get("system"):
        body["systemInstruction"] = {"parts": [{"text": req["system"]}]}
    if req.get("max_tokens"):
        body["generationConfig"]["maxOutputTokens"] = req["max_tokens"]
    if req.get("temperature") is not None:
        body["generationConfig"]["temperature"] = req["temperature"]
    headers = {"x-goog-api-key": key("GOOGLE_API_KEY", "GEMINI_API_KEY")}
    url = f"{base}/models/{req['model']}:generateContent"
    out = post(url, body, headers, req.get("timeout_s", 120))
    candidate = out["candidates"][0]
    usage = out.get("usageMetadata", {})
    output_tokens = usage.get("candidatesTokenCount")
    if output_tokens is not None and usage.get("thoughtsTokenCount"):
        output_tokens += usage["thoughtsTokenCount"]
    return {
        "output": "".join(p.get("text", "") for p in candidate["content"]["parts"]),
        "model": req["model"],
        "finish_reason": {"STOP": "stop", "MAX_TOKENS": "length"}.get(
            candidate.get("finishReason"), candidate.get("finishReason")
        ),
        "usage": {"input_tokens": usage.get("promptTokenCount"), "output_tokens": output_tokens},
    }


PROVIDERS = {
    "anthropic-claude": anthropic,
    "openai-gpt": openai,
    "google-gemini": gemini,
    "huggingface": huggingface,
    "ollama": ollama,
    "lmstudio": lmstudio,
}


if __name__ == "__main__":
    sys.exit(main())
