"""`GET /metrics`: Prometheus's text format (what llama-server offers, and what Ollama's users
ask for: ollama#3144). Counters are kept by the request log (http.RequestLog); gauges are
read from the model pool when scraped."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seconds = 0.0  # time spent answering generation requests

    def record(self, path: str, status: int, state: dict[str, Any], seconds: float) -> None:
        route = path if path in _ROUTES else "other"
        with self._lock:
            self.requests[(route, status)] += 1
            if "completion_tokens" in state:
                self.prompt_tokens += int(state.get("prompt_tokens") or 0)
                self.completion_tokens += int(state["completion_tokens"] or 0)
                self.seconds += seconds

    def render(self, models: list[dict[str, Any]]) -> str:
        lines = ["# HELP llmrun_requests_total HTTP requests answered, by route and status",
                 "# TYPE llmrun_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'llmrun_requests_total{{route="{route}",status="{status}"}} {n}')
            totals = (self.prompt_tokens, self.completion_tokens, self.seconds)
        lines += ["# HELP llmrun_prompt_tokens_total prompt tokens of generation requests",
                  "# TYPE llmrun_prompt_tokens_total counter",
                  f"llmrun_prompt_tokens_total {totals[0]}",
                  "# HELP llmrun_completion_tokens_total tokens generated",
                  "# TYPE llmrun_completion_tokens_total counter",
                  f"llmrun_completion_tokens_total {totals[1]}",
                  "# HELP llmrun_generation_seconds_total time spent answering generation "
                  "requests", "# TYPE llmrun_generation_seconds_total counter",
                  f"llmrun_generation_seconds_total {totals[2]:.3f}"]
        for name, key, text in (("running", "running", "requests generating now"),
                                ("queued", "queued", "requests waiting for their model")):
            lines += [f"# HELP llmrun_{name} {text}", f"# TYPE llmrun_{name} gauge"]
            lines += [f'llmrun_{name}{{model="{_label(m["name"])}"}} {m[key]}' for m in models]
        lines += ["# HELP llmrun_model_memory_bytes resident memory of a model's process",
                  "# TYPE llmrun_model_memory_bytes gauge"]
        lines += [f'llmrun_model_memory_bytes{{model="{_label(m["name"])}"}} {m["memory"]}'
                  for m in models if m.get("memory") is not None]
        lines += ["# HELP llmrun_models_loaded models loaded now",
                  "# TYPE llmrun_models_loaded gauge", f"llmrun_models_loaded {len(models)}"]
        return "\n".join(lines) + "\n"


_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                     "/api/ps", "/api/stop", "/metrics"})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
