"""reward.source=remote: an HTTP scorer. Each request POSTs a JSON batch to reward.url:

    scores (algorithm.preference != matrix)
        {"kind": "scores", "items": [{"messages": [{role, content}...], "response": str}, ...]}
        -> {"scores": [float, ...]}                              one per item
    matrix (algorithm.preference = matrix)
        {"kind": "matrix", "groups": [{"messages": [...], "responses": [str] * K}, ...]}
        -> {"matrices": [[[P(y_i > y_j)] * K] * K, ...]}          one K x K matrix per group

reward.batch_size items (or groups) per request. A request that fails (connection, HTTP status
>= 400, reward.request_timeout_s without an answer, a body that is not the JSON above) is retried
reward.retries times, waiting reward.backoff_s and doubling; then one UserError naming the URL and
the last failure ends the run (exit 2).
"""

from __future__ import annotations

import json
import math
import socket
import time
import urllib.error
import urllib.request
from typing import Any, List, Sequence

from sppo_megatron.errors import UserError
from sppo_megatron.reward.oracles.base import Messages, Oracle
from sppo_megatron.reward.oracles.hf import batches


class RemoteError(Exception):
    """One failed attempt, described in a few words (status, timeout, malformed body)."""


class RemoteOracle(Oracle):
    def __init__(self, cfg: Any, matrix: bool):
        self.matrix = matrix
        self.url, self.batch_size = cfg.url, cfg.batch_size
        self.timeout, self.retries, self.backoff = cfg.request_timeout_s, cfg.retries, cfg.backoff_s

    def units(self, messages: Sequence[Messages], responses: Sequence[str], n: int) -> List[Any]:
        if not self.matrix:
            return super().units(messages, responses, n)
        return [(messages[g * n], list(responses[g * n : (g + 1) * n])) for g in range(len(responses) // n)]

    def assemble(self, results: List[Any], num_samples: int, n: int) -> List[Any]:
        return [row for matrix in results for row in matrix] if self.matrix else results

    def compute(self, units: List[Any]) -> List[Any]:
        out: List[Any] = []
        for batch in batches(units, self.batch_size):
            if self.matrix:
                body = {"kind": "matrix", "groups": [{"messages": m, "responses": r} for m, r in batch]}
            else:
                body = {"kind": "scores", "items": [{"messages": m, "response": r} for m, r in batch]}
            out += self.request(body, [len(r) for _, r in batch] if self.matrix else len(batch))
        return out

    def request(self, body: dict, expect: Any) -> List[Any]:
        """POST with bounded retries; the parsed, checked answer."""
        data = json.dumps(body).encode("utf-8")
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._parse(self._post(data), expect)
            except RemoteError as e:
                failure = str(e)
            if attempt + 1 < attempts:
                time.sleep(self.backoff * 2**attempt)
        raise UserError(
            f"reward.url {self.url}: {failure} (after {attempts} attempt{'s' if attempts > 1 else ''}; "
            "see reward.request_timeout_s, reward.retries)"
        )

    def _post(self, data: bytes) -> bytes:
        req = urllib.request.Request(self.url, data=data, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise RemoteError(f"HTTP status {e.code} {e.reason}") from None
        except (socket.timeout, TimeoutError):
            raise RemoteError(f"no answer within {self.timeout:g}s") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise RemoteError(f"no answer within {self.timeout:g}s") from None
            raise RemoteError(f"cannot connect ({reason})") from None
        except OSError as e:
            raise RemoteError(f"connection failed ({e})") from None

    def _parse(self, raw: bytes, expect: Any) -> List[Any]:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise RemoteError(f"malformed JSON in the answer ({raw[:60]!r})") from None
        key = "matrices" if self.matrix else "scores"
        values = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(values, list):
            raise RemoteError(f"the answer has no {key!r} list")
        if self.matrix:
            if len(values) != len(expect) or not all(_is_matrix(m, k) for m, k in zip(values, expect)):
                raise RemoteError(
                    f"'matrices' must hold one K x K matrix of probabilities in [0, 1] per group (K = {expect[0]})"
                )
            return values
        if len(values) != expect or not all(_finite(v) for v in values):
            raise RemoteError(f"'scores' must hold {expect} finite numbers, got {str(values)[:60]}")
        return [float(v) for v in values]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_matrix(m: Any, k: int) -> bool:
    return (
        isinstance(m, list)
        and len(m) == k
        and all(isinstance(row, list) and len(row) == k and all(_finite(v) and 0 <= v <= 1 for v in row) for row in m)
    )
