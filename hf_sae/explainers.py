"""The LLMs that explain and score features (`autointerp`): a transformers chat model run here (`LocalChat`), or any
server speaking OpenAI's chat completions (`EndpointChat`), chosen by `load_chat`. Both report each batch of prompts
they answer to an optional `progress` bar, so a long generation is never a silent one."""

import http.client
import json
import math
import os
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging

from .errors import ExplainerError
from .models import load_model
from .offline.builtin_models import BUILTIN_MODELS

logger = logging.get_logger(__name__)

BUILT_IN_EXPLAINER = (
    "The explainer is the built-in {name}, a 135M-parameter model: its explanations score at chance (detection about "
    "0.5), so they cannot tell a good feature from a bad one. Point hf-sae explain at a capable chat model served "
    "with an OpenAI-compatible API: --explainer_endpoint http://127.0.0.1:8000/v1 --explainer MODEL (vLLM, "
    "`transformers serve MODEL --port 8000`, or OpenAI with --api_key). Offline, the interpretability score that "
    "`hf-sae features` computes is what the browser and the explorer show."
)


def begin(progress, what: str, total: int) -> None:
    """Start a new step on the `progress` bar (a tqdm, or None for none): `what` is counted up to `total`."""
    if progress is not None:
        progress.reset(total=total)
        progress.set_description_str(what)


class _Steps(BaseStreamer):
    """Counts the tokens `generate` produces on a progress bar: the first call is the prompt, each later one a step."""

    def __init__(self, progress):
        self.progress, self.prompt_seen = progress, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.progress.update(1)
        self.prompt_seen = True

    def end(self) -> None:
        pass


class LocalChat:
    """A transformers chat model run here: batched greedy generation, and P(Yes) from the next-token logits."""

    def __init__(self, model, tokenizer, name: str, batch_size: int = 16):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.progress = None  # a tqdm bar that counts each generated token and answered question, where one is set
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        first = lambda words: sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})  # noqa: E731
        self.yes, self.no = first(("Yes", "yes", " Yes")), first(("No", "no", " No"))

    def _encode(self, prompts: list[str]):
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        return batch.to(self.model.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out, batches = [], range(0, len(prompts), self.batch_size)
        begin(self.progress, f"Writing {len(prompts)} explanation(s), tokens", len(batches) * max_new_tokens)
        for start in batches:
            batch = self._encode(prompts[start : start + self.batch_size])
            streamer = None if self.progress is None else _Steps(self.progress)
            ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id, streamer=streamer)  # fmt: skip
            out += self.tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    @torch.no_grad()
    def yes_probability(self, prompts: list[str]) -> list[float | None]:
        out = []
        begin(self.progress, "Scoring: questions answered", len(prompts))
        for start in range(0, len(prompts), self.batch_size):
            logits = self.model(**self._encode(prompts[start : start + self.batch_size])).logits[:, -1].float()
            margin = logits[:, self.yes].logsumexp(-1) - logits[:, self.no].logsumexp(-1)
            out += torch.sigmoid(margin).tolist()
            if self.progress is not None:
                self.progress.update(len(logits))
        return out


MAX_ANSWER_BYTES = 8 * 2**20  # a chat answer of a few tokens is a few kB, a model list tens of kB
FAILED_REQUEST = (OSError, ValueError, http.client.HTTPException)  # HTTP errors, timeouts, bytes that are no JSON


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the scheme, host and port the user named: every request carries the API key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl)[:2] != urllib.parse.urlsplit(req.full_url)[:2]:  # scheme, host and port
            fp.close()
            raise ExplainerError(
                f"The explainer endpoint redirected {req.full_url} to {newurl}, on another host; hf_sae does not "
                "follow it, as the request carries the API key. If that server is the right one, name it in "
                "--explainer_endpoint."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class EndpointChat:
    """Any server speaking OpenAI's /v1/chat/completions (vLLM, `transformers serve`, OpenAI itself); its yes / no
    answers are read from the text, so P(Yes) is 1, 0, or `None` where the answer says neither. A failed request (an
    HTTP error, no whole answer in `timeout` s or `MAX_ANSWER_BYTES`, no chat completion) answers `None` to
    `generate`, NaN to `yes_probability`, and its reason goes to `failures`."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, workers: int = 4):
        self.base = url.rstrip("/").removesuffix("/v1") + "/v1"
        key = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.headers = {"Content-Type": "application/json", **key}
        self.workers, self.timeout, self.failures = workers, 600.0, []
        self.progress = None  # a tqdm bar that counts each answer, where one is set
        self._opener = urllib.request.build_opener(_SameOriginRedirects)
        try:
            listed = self._request("models", None, timeout=10)["data"]
            name = model or listed[0]["id"]
        except IndexError:
            raise ExplainerError(f"The server at {url} lists no models; name one with --explainer.") from None
        except (*FAILED_REQUEST, KeyError, TypeError) as error:
            raise ExplainerError(
                f"Expected an OpenAI-compatible server at --explainer_endpoint {url}; {self.base}/models answered "
                f"{type(error).__name__}: {error}. Start it (`transformers serve MODEL --port 8000`) or fix the URL."
            ) from None
        self.name = name

    def _request(self, path: str, body: dict | None, timeout: float) -> dict:
        """The server's JSON answer, whole within `timeout` seconds in all (a socket's timeout is per read: a byte at a
        time never reaches it), in a worker that a stalled read leaves behind (a daemon, which cannot hold the run)."""
        result, deadline = {}, time.monotonic() + timeout
        worker = threading.Thread(target=self._fetch, args=(path, body, deadline, result), daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise TimeoutError(f"no complete answer from {self.base}/{path} within {timeout:g} s")
        if isinstance(result["answer"], BaseException):
            raise result["answer"]
        return result["answer"]

    def _fetch(self, path: str, body: dict | None, deadline: float, result: dict) -> None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}/{path}", data=data, headers=self.headers)
        try:
            with self._opener.open(request, timeout=max(deadline - time.monotonic(), 0.1)) as response:
                answer = bytearray()
                while chunk := response.read1(2**16):
                    answer += chunk
                    if time.monotonic() > deadline:
                        raise TimeoutError("no complete answer in time: it came too slowly")
                    if len(answer) > MAX_ANSWER_BYTES:
                        raise ValueError(f"its answer is over {MAX_ANSWER_BYTES:,} bytes")
            result["answer"] = json.loads(answer)
        except BaseException as error:  # noqa: BLE001 (raised again in the caller's thread)
            result["answer"] = error

    def _complete(self, prompt: str, max_tokens: int) -> str | None:
        body = {"model": self.name, "messages": [{"role": "user", "content": prompt}]}
        body |= {"max_tokens": max_tokens, "temperature": 0, "stream": False}
        try:
            return _answer_text(self._request("chat/completions", body, self.timeout))
        except FAILED_REQUEST as error:
            if not self.failures:
                logger.warning("The explainer endpoint failed on a request (%s); the feature is not recorded.", error)
            self.failures.append(f"{type(error).__name__}: {error}")
            return None

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str | None]:
        begin(self.progress, "Answers from the endpoint", len(prompts))

        def answer(prompt: str) -> str | None:
            text = self._complete(prompt, max_new_tokens)
            if self.progress is not None:
                self.progress.update(1)
            return text

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(answer, prompts))

    def yes_probability(self, prompts: list[str]) -> list[float | None]:
        return [math.nan if answer is None else parse_yes_no(answer) for answer in self.generate(prompts, 3)]


def _answer_text(answer) -> str:
    try:
        content = answer["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise ValueError(f"not an OpenAI chat completion: {json.dumps(answer)[:200]}")
    return content


def parse_yes_no(answer: str) -> float | None:
    """1.0 for an answer that starts with yes, 0.0 for no, None for anything else."""
    words = answer.strip().lower().lstrip("\"'*([").split()
    word = words[0].strip(".,!:;\"'*)]") if words else ""
    return {"yes": 1.0, "no": 0.0}.get(word)


def load_chat(explainer: str | None, endpoint: str | None, *, api_key=None, device=None, batch_size=16):
    """The explainer: a server at `endpoint` (checked now, before any work), else a local transformers model."""
    if endpoint:
        return EndpointChat(endpoint, explainer, api_key)
    if explainer is None or (explainer in BUILTIN_MODELS and not os.path.exists(explainer)):
        logger.warning(BUILT_IN_EXPLAINER.format(name=explainer or next(iter(BUILTIN_MODELS))))
    model, tokenizer = load_model(explainer, device=device)
    if not getattr(tokenizer, "chat_template", None):
        raise ExplainerError(
            f"Expected a chat model for --explainer; {explainer}'s tokenizer has no chat template. Name an "
            "instruction-tuned one (e.g. smollm2-135m-instruct, Qwen/Qwen2.5-7B-Instruct) or serve one instead "
            "(--explainer_endpoint)."
        )
    return LocalChat(model, tokenizer, explainer or getattr(model, "name_or_path", "local"), batch_size)
