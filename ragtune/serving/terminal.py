"""`ragtune chat`: a terminal chat against a ragtune server (running, or started in this process
by `--in-process`), streamed, with sources.

It speaks the server's public HTTP API only (the OpenAI chat endpoint with `stream: true`;
`sources` arrive in the first event), so it works against any ragtune server it can reach.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
from rich.console import Console


class ChatError(Exception):
    """The server could not be used (unreachable, refused the model...): a message for the user."""


@dataclass
class ChatOptions:
    server: str
    model: str | None = None
    collection: str | None = None
    rag: bool = True
    top_k: int | None = None
    grounding: str | None = None
    extra_rag: dict[str, Any] = field(default_factory=dict)  # any other `rag` field (--rag KEY=VALUE)
    max_tokens: int = 256
    temperature: float = 0.0
    api_key: str | None = None
    remember: bool = False


@dataclass
class Answer:
    text: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    route: dict[str, Any] | None = None  # where `model: auto` went (the `ragtune` extension)


class TerminalChat:
    def __init__(self, options: ChatOptions, *, out: TextIO | None = None):
        self.options = options
        self.out = out or sys.stdout
        self.console = Console(file=self.out, highlight=False, soft_wrap=True)
        self.errors = Console(file=out or sys.stderr, highlight=False, soft_wrap=True)
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.http = httpx.Client(base_url=options.server.rstrip("/"), headers=headers, timeout=300)
        self.history: list[dict[str, str]] = []

    def close(self) -> None:
        self.http.close()

    # -- setup ---------------------------------------------------------------------------
    def pick_model(self) -> str:
        """The model asked for (checked), else the `demo` profile, else the first profile, else base."""
        cards = self._get("/v1/models")["data"]
        names = [c["id"] for c in cards]
        wanted = self.options.model
        if wanted is not None:
            if wanted not in names and wanted != "auto":  # auto is unlisted to a key with one model
                raise ChatError(f"the server has no model {wanted!r}; it has: {', '.join(names)}")
            return wanted
        profiles = [c["id"] for c in cards if c.get("kind") == "profile"]
        if "demo" in profiles:
            return "demo"
        return profiles[0] if profiles else next(c["id"] for c in cards if c.get("kind") == "base")

    def _get(self, path: str) -> Any:
        try:
            resp = self.http.get(path)
        except httpx.TransportError as exc:
            raise ChatError(
                f"no ragtune server at {self.options.server} ({exc}); start one with `make demo` or "
                "`ragtune serve`, or point --server at it"
            ) from None
        if resp.status_code >= 400:
            raise ChatError(_error_message(resp))
        return resp.json()

    # -- one question ----------------------------------------------------------------------
    def body(self, model: str, question: str) -> dict[str, Any]:
        history = self.history if self.options.remember else []
        messages = [*history, {"role": "user", "content": question}]
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self.options.max_tokens,
            "temperature": self.options.temperature,
        }
        if not self.options.rag:
            body["rag"] = False
        else:
            wanted = {
                "collection": self.options.collection,
                "top_k": self.options.top_k,
                "grounding": self.options.grounding,
            }
            rag = {k: v for k, v in wanted.items() if v} | self.options.extra_rag
            if rag:
                body["rag"] = rag
        return body

    def ask(self, model: str, question: str) -> Answer:
        """Stream one answer to the terminal, then its sources; returns it."""
        answer = Answer()
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=self.body(model, question)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ChatError(_error_message(resp))
                for event in _events(resp.iter_lines()):
                    if "error" in event:
                        raise ChatError(event["error"].get("message", "the server ended the answer"))
                    if "sources" in event:
                        answer.sources = event["sources"]
                    if (event.get("ragtune") or {}).get("route"):
                        answer.route = event["ragtune"]["route"]
                        self.console.print(f"[dim]{_escape(route_line(answer.route))}[/]")
                    if event.get("usage"):
                        answer.usage = event["usage"]
                    for choice in event.get("choices", []):
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            answer.text += text
                            self.out.write(text)
                            self.out.flush()
                        answer.finish_reason = choice.get("finish_reason") or answer.finish_reason
        except httpx.TransportError as exc:
            raise ChatError(f"lost the server at {self.options.server}: {exc}") from None
        self.out.write("\n")
        self.print_sources(answer)
        if self.options.remember:
            self.history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer.text},
            ]
        return answer

    def print_sources(self, answer: Answer) -> None:
        if answer.finish_reason == "length":
            self.console.print(f"[dim](stopped at {self.options.max_tokens} tokens: --max-tokens)[/]")
        if not answer.sources:
            return
        cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer.text)}
        self.console.print("[dim]sources:[/]")
        for s in answer.sources:
            mark = "[bold yellow]*[/]" if s["index"] in cited else " "
            snippet = " ".join(s["text"].split())
            snippet = snippet[:100] + ("..." if len(snippet) > 100 else "")
            title = s.get("title") or s["document_id"]
            self.console.print(
                f"{mark}[bold][{s['index']}][/] {_escape(title)} [dim]({_escape(s['document_id'])}, "
                f"score {s['score']:.4f})[/]\n    [dim]{_escape(snippet)}[/]"
            )

    # -- the loop ------------------------------------------------------------------------
    def run(self, lines: Iterator[str], *, interactive: bool) -> int:
        """Ask each line; the exit status: 1 when a question read from a pipe failed (its error
        is on stderr and the next question is asked all the same), else 0."""
        model = self.pick_model()
        failed = 0
        where = (
            "no retrieval"
            if not self.options.rag
            else f"retrieval from {self.options.collection}"
            if self.options.collection
            else "retrieval as the model's profile says"
        )
        self.console.print(
            f"[bold]ragtune chat[/] with [bold]{_escape(model)}[/] at {self.options.server} ({where}). "
            + ("Empty line or Ctrl-D quits; /new forgets the conversation." if interactive else "")
        )
        for line in lines:
            question = line.strip()
            if not question:
                if interactive:
                    break
                continue
            if question in ("/quit", "/exit"):
                break
            if question == "/new":
                self.history = []
                continue
            if not interactive:
                self.console.print(f"[bold cyan]> {_escape(question)}[/]")
            try:
                self.ask(model, question)
            except ChatError as exc:
                self.errors.print(f"[bold red]error:[/] {_escape(str(exc))}")
                failed += 1
        return 1 if failed and not interactive else 0


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        message = str(err["message"])
        return message + (f" (field: {err['param']})" if err.get("param") else "")
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def route_line(route: dict[str, Any]) -> str:
    """`model: auto`'s choice in one line: "auto -> demo (demo 0.61, world 0.22)"."""
    scores = ", ".join(f"{k} {v:.2f}" for k, v in list((route.get("scores") or {}).items())[:3])
    why = {"below_floor": "no profile fitted", "close_call": "too close to call"}.get(route.get("reason", ""))
    detail = "; ".join(x for x in (why, scores) if x)
    return f"auto -> {route['chosen']}" + (f" ({detail})" if detail else "")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def input_lines(prompt: str) -> Iterator[str]:
    """Lines typed at a terminal (with line editing where readline exists); ends on Ctrl-D."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            print()
            return
