"""`phiforge serve` throughput on loopback at concurrency 1/4/16, next to the engine's offline batched throughput.

A small random Phi3 (d_model 256, 4 layers, 4 heads / 2 KV heads, vocab ~2k from a BPE trained on the fly) is
exported to a temporary folder and served by `phiforge serve` in a child process, as a user would run it. Clients
are threads, each with its own HTTP connection, sending greedy /v1/completions requests (prompts given as token ids,
16-48 tokens, every request max_tokens new tokens) until a fixed number of requests is done. The stop tokens are
made unreachable, so every request produces exactly max_tokens tokens on both sides.

"offline" is `generate` on the same prompts in this process with batch_size = concurrency, i.e. what the engine
does with perfect batching and no HTTP; server/offline is the share of that the server reaches. The two sides
alternate, --repeats times each, and every figure is a median: the shared machine's load swings a lot. Both use
one intra-op thread by default: with two OpenMP threads on a 2-core machine that other jobs share, every barrier
spins whenever the other core is taken, and the same offline run took anywhere from 1 s to 50 s.

    python bench/serve.py              # the reported run
    python bench/serve.py --quick      # smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import httpx  # noqa: E402
import torch  # noqa: E402

from phiforge.lm.engine import load_chat_model  # noqa: E402
from phiforge.lm.checkpoint import export_model  # noqa: E402
from phiforge.lm.generate import generate  # noqa: E402
from phiforge.lm.model import ModelConfig, Phi3  # noqa: E402
from phiforge.lm.tokenizer import ChatTokenizer, train_bpe  # noqa: E402


def build_checkpoint(directory: Path) -> None:
    rng = random.Random(0)
    # Made-up words from random syllables: enough distinct pieces for BPE to fill a 2k vocabulary.
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    texts = [" ".join(rng.choices(words, k=60)) for _ in range(1000)]
    tok = ChatTokenizer(train_bpe(texts, vocab_size=2048, min_frequency=1, progress=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ffn=768,
                      max_seq_len=512)
    torch.manual_seed(0)
    model = Phi3(cfg)
    with torch.no_grad():
        model.lm_head.weight[[tok.im_end_id, tok.endoftext_id]] = 0.0  # logit 0 never wins a greedy argmax over 2k
    export_model(model, cfg, tok, directory)


def start_server(model_dir: Path, max_concurrent: int, threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "phiforge.cli", "serve", str(model_dir), "--port", "0",
                             "--max-concurrent", str(max_concurrent)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0].rstrip("/")


def run_clients(url: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    todo = list(range(len(prompts)))
    lock = threading.Lock()
    latencies, tokens, errors = [], [], []

    def worker():
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t = time.perf_counter()
                r = client.post(url + "/v1/completions", json={"prompt": prompts[i], "max_tokens": max_tokens,
                                                               "temperature": 0})
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                latencies.append(time.perf_counter() - t)
                tokens.append(r.json()["usage"]["completion_tokens"])

    before = httpx.get(url + "/health").json()
    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    after = httpx.get(url + "/health").json()
    batches = after["batches"] - before["batches"]
    return {"req_s": len(prompts) / wall, "tok_s": sum(tokens) / wall, "p50": statistics.median(latencies),
            "batch": (after["batched_requests"] - before["batched_requests"]) / max(batches, 1), "tokens": sum(tokens)}


def run_offline(model, tok, prompts, concurrency: int, max_tokens: int) -> float:
    t = time.perf_counter()
    outs = generate(model, prompts, max_new_tokens=max_tokens, pad_id=tok.pad_id,
                    stop_ids=[tok.im_end_id, tok.endoftext_id], batch_size=concurrency)
    return sum(map(len, outs)) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=32, help="requests per run")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side per concurrency; medians reported")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, server and offline alike")
    ap.add_argument("--quick", action="store_true", help="8 requests of 8 tokens")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.max_tokens, args.repeats = 8, 8, 1
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_checkpoint(model_dir)
        model, tok, _ = load_chat_model(model_dir)
        rng = random.Random(1)
        prompts = [[rng.randrange(5, tok.vocab_size) for _ in range(rng.randint(16, 48))] for _ in range(args.requests)]
        proc, url = start_server(model_dir, max_concurrent=max(args.concurrency) * 2, threads=args.threads)
        try:
            run_clients(url, prompts[:2], 1, 4)  # warm-up: first-call allocations on both sides
            run_offline(model, tok, prompts[:2], 2, 4)
            rows = []
            for c in args.concurrency:
                run_offline(model, tok, prompts[:c], c, args.max_tokens)  # warm this batch size's shapes
                servers, offlines = [], []
                for r in range(args.repeats):  # alternating, so the shared machine's load swings hit both sides
                    for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                        if side == 0:
                            servers.append(run_clients(url, prompts, c, args.max_tokens))
                        else:
                            offlines.append(run_offline(model, tok, prompts, c, args.max_tokens))
                median = {k: statistics.median(s[k] for s in servers) for k in servers[0]}
                rows.append((c, median, statistics.median(offlines)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"\n{args.requests} requests x {args.max_tokens} new tokens, greedy, prompts 16-48 tokens, "
          f"median of {args.repeats} runs; "
          f"{model.num_params() / 1e6:.1f}M-parameter model, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    head = ("concurrency", "server req/s", "server tok/s", "p50 latency s", "mean batch", "offline tok/s",
            "server/offline")
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for c, s, off in rows:
        cells = (c, f"{s['req_s']:.2f}", f"{s['tok_s']:.0f}", f"{s['p50']:.3f}", f"{s['batch']:.1f}", f"{off:.0f}",
                 f"{s['tok_s'] / off:.2f}")
        print(" | ".join(str(x).rjust(len(h)) for x, h in zip(cells, head)))


if __name__ == "__main__":
    main()
