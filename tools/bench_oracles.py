"""Scoring throughput of each preference oracle kind on this machine: samples per second through
`Oracle.score_groups` (one process), on tiny random models built here like the tests build them.

    python tools/bench_oracles.py [--prompts 16] [--n 4] [--batch-size 16] [--repeats 3]

reward_model: one forward per sample; pairwise (PairRM) and judge: K (K - 1) ordered pairs per
prompt; remote: a local http.server on 127.0.0.1 answering scores. The figures measure the
oracle plumbing (tokenisation, batching, sharding, assembly) with models of a few hundred
thousand parameters; a real oracle's cost is its model's forward.
"""

import argparse
import http.server
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sppo_megatron.config.schema import RewardConfig  # noqa: E402
from sppo_megatron.reward.oracles import build_oracle  # noqa: E402
from sppo_megatron.testing.oracle_models import make_judge, make_pairrm, make_reward_model  # noqa: E402


class _Scores(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        payload = json.dumps({"scores": [float(len(it["response"])) for it in body["items"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench_oracles_")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scores)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kinds = {
        "reward_model": (dict(model_path=make_reward_model(os.path.join(root, "rm"))), "bradley_terry"),
        "pairwise": (
            dict(model_path=make_pairrm(os.path.join(root, "pairrm")), pairwise_prompt_template=None),
            "matrix",
        ),
        "judge": (dict(model_path=make_judge(os.path.join(root, "judge")), judge_choices=["a", "b"]), "matrix"),
        "remote": (dict(url=f"http://127.0.0.1:{server.server_address[1]}/"), "bradley_terry"),
    }
    words = "the quick brown fox jumps over a lazy dog and then some more words follow here".split()
    messages = [
        [{"role": "user", "content": " ".join(words[g % 5 : g % 5 + 6])}]
        for g in range(args.prompts)
        for _ in range(args.n)
    ]
    responses = [" ".join(words[(i * 7) % 9 : (i * 7) % 9 + 3 + i % 5]) for i in range(args.prompts * args.n)]
    print(
        f"{args.prompts} prompts x K={args.n} = {len(responses)} samples, batch_size {args.batch_size}, "
        f"best of {args.repeats}"
    )
    print(f"{'oracle':<14}{'forwards':>9}{'seconds':>9}{'samples/s':>11}")
    for kind, (keys, preference) in kinds.items():
        oracle = build_oracle(RewardConfig(source=kind, batch_size=args.batch_size, max_length=256, **keys), preference)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            oracle.score_groups(messages, responses, args.n)
            best = min(best, time.perf_counter() - start)
        units = len(responses) * ((args.n - 1) if oracle.matrix else 1)
        print(f"{kind:<14}{units:>9}{best:>9.3f}{len(responses) / best:>11.1f}")
    server.shutdown()


if __name__ == "__main__":
    main()
