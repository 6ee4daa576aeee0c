"""Training-step throughput and MFU: phiforge's Phi3 against transformers' Phi3ForCausalLM, same weights, same run.

One full training step = bf16-autocast forward, fp32 cross-entropy, backward, gradient clipping and an AdamW step
(phiforge.train.optim.build_optimizer / clip_and_step, identical for all). phiforge's step is exactly `phiforge pretrain`'s
(Phi3 + train.cross_entropy). The named baseline is transformers' own training path: Phi3ForCausalLM with
attn_implementation="sdpa" called with labels, so its loss function upcasts the logits and computes the loss, as
its Trainer does. A third row, transformers' model with phiforge's loss, splits the gain between model and loss.

The two implementations alternate in rounds (and swap which goes first each round) so that whatever else the shared
machine is doing lands on both; each figure is the median over all timed steps. The bf16 matmul peak that MFU is
measured against is taken in this same process (best of n = 1024/2048/4096, before and after the timed rounds).

    python bench/train_throughput.py                 # the reported run (d_model 512, 8 layers, seq 512, batch 8)
    python bench/train_throughput.py --gqa           # 2 KV heads instead of 8
    python bench/train_throughput.py --compile       # torch.compile phiforge's model (falls back to eager on error)
    python bench/train_throughput.py --quick         # tiny config, seconds: a smoke test
    python bench/train_throughput.py --device cuda --size gpu --compile   # ~1B params, seq 2048, on a GPU

On a GPU, MFU is against the vendor's dense bf16 spec (flops.GPU_PEAKS) and every step ends in a synchronize.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing

import torch  # noqa: E402

from phiforge.lm import flops  # noqa: E402
from phiforge.config import OptimConfig  # noqa: E402
from phiforge.lm.model import ModelConfig, Phi3, hf_config_dict  # noqa: E402
from phiforge.train.optim import autocast, build_optimizer, clip_and_step, cross_entropy  # noqa: E402

BOS, EOS, PAD = 1, 2, 0


def build_config(args) -> ModelConfig:
    if args.size == "gpu":  # Phi-3-mini's vocabulary, GQA, ~1.1B parameters: big enough to keep an H100 busy
        return ModelConfig(vocab_size=32064, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ffn=5632,
                           max_seq_len=args.seq)
    if args.quick:
        return ModelConfig(vocab_size=1024, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2 if args.gqa else 4,
                           d_ffn=384, max_seq_len=args.seq)
    return ModelConfig(vocab_size=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=2 if args.gqa else 8,
                       d_ffn=1536, max_seq_len=args.seq)


def build_hf(cfg: ModelConfig, state_dict: dict) -> torch.nn.Module:
    import transformers

    hf_cfg = transformers.Phi3Config(**hf_config_dict(cfg, BOS, EOS, PAD))
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.Phi3ForCausalLM(hf_cfg)
    model.load_state_dict(state_dict, strict=True)
    return model.train()


class OtherLoad:
    """CPU time other processes used since the last call, in cores: the shared machine's noise, made visible."""

    def __init__(self):
        self.mark = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as f:
                jiffies = [int(v) for v in f.readline().split()[1:]]
            busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = float("nan")
        own = resource.getrusage(resource.RUSAGE_SELF)
        return busy, own.ru_utime + own.ru_stime, time.perf_counter()

    def __call__(self) -> float:
        (b0, c0, t0), (b1, c1, t1) = self.mark, self._read()
        self.mark = (b1, c1, t1)
        return max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)


def peak_flops(sizes=(1024, 2048, 4096)) -> dict[int, float]:
    """bf16 matmul FLOP/s at each size, measured now (the lru_cache would otherwise return the first answer)."""
    out = {}
    for n in sizes:
        flops.measured_cpu_peak.cache_clear()
        out[n] = flops.measured_cpu_peak("bf16", n=n)
    flops.measured_cpu_peak.cache_clear()
    return out


class Runner:
    """One model, its optimiser and a closure doing a full training step on a fixed batch."""

    def __init__(self, name: str, model: torch.nn.Module, hf: bool, x: torch.Tensor, y: torch.Tensor,
                 lr: float = 1e-5, hf_loss: bool = False):
        self.device = x.device
        self.name, self.model, self.hf, self.x, self.y, self.hf_loss = name, model, hf, x, y, hf_loss
        # A small, fixed lr: the weights barely move, so both models keep doing the same arithmetic throughout.
        self.opt = build_optimizer(model, OptimConfig(lr=lr, warmup_steps=0))
        self.times: list[float] = []
        self.last_loss = float("nan")

    def step(self) -> float:
        t = time.perf_counter()
        with autocast("bf16", self.device):
            if self.hf_loss:  # y as already-shifted labels: the same targets as ours, mean over tokens
                mean = self.model(input_ids=self.x, labels=self.y, shift_labels=self.y).loss
            else:
                out = self.model(input_ids=self.x) if self.hf else self.model(self.x)
        if not self.hf_loss:
            loss, count = cross_entropy(out.logits if self.hf else out, self.y)
            mean = loss / count
        mean.backward()
        clip_and_step(self.model, self.opt, 1.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        self.last_loss = float(mean.detach())
        return dt


def try_compile(model: Phi3, runner_args) -> tuple[torch.nn.Module, str]:
    """torch.compile the model and run one step with it; on any failure keep eager and say why."""
    try:
        compiled = torch.compile(model)
        probe = Runner("probe", compiled, False, *runner_args, lr=0.0)  # compiles forward and backward, moves nothing
        print(f"torch.compile: first step (compiling forward and backward) took {probe.step():.1f} s")
        return compiled, "torch.compile"
    except Exception as e:  # inductor needs a working C++ toolchain; any failure there means eager
        msg = (str(e).strip().splitlines() or [""])[0][:120]
        warnings.warn(f"torch.compile failed, timing eager instead: {type(e).__name__}: {msg}")
        return model, f"eager (compile failed: {type(e).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each round times both models")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the first round")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--gqa", action="store_true", help="2 KV heads instead of one per query head")
    ap.add_argument("--compile", action="store_true", help="torch.compile phiforge's model")
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke test")
    ap.add_argument("--no-hf", action="store_true", help="time phiforge only")
    ap.add_argument("--no-split", action="store_true", help="skip the row of transformers' model + phiforge's loss")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--size", choices=("cpu", "gpu"), default="cpu", help="the model: d512 L8 (cpu) or ~1.1B (gpu)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup, args.batch, args.seq = 2, 2, 1, 2, 64

    cfg = build_config(args)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    pf = Phi3(cfg).train().to(dev)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)
    x, y = data[:, :-1].contiguous().to(dev), data[:, 1:].contiguous().to(dev)
    runners = []
    hf = None if args.no_hf else build_hf(cfg, pf.state_dict()).to(dev)
    with torch.no_grad(), autocast("bf16", dev):
        if hf is not None:
            diff = (pf(x[:1]).float() - hf(input_ids=x[:1]).logits.float()).abs().max().item()
            print(f"same weights: max |logit difference| under bf16 autocast = {diff:.3g}")

    label = "phiforge"
    if args.compile:
        model, how = try_compile(pf, (x, y))
        label = f"phiforge ({how})"
    else:
        model = pf
    runners.append(Runner(label, model, False, x, y))
    if hf is not None:
        runners.append(Runner("transformers (sdpa)", hf, True, x, y, hf_loss=True))
        if not args.no_split:
            runners.append(Runner("transformers (sdpa) + phiforge loss", build_hf(cfg, pf.state_dict()).to(dev), True,
                                  x, y))

    fpt = flops.train_flops_per_token(cfg, args.seq)
    tokens = args.batch * args.seq
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config d_model {cfg.d_model}, "
          f"{cfg.n_layers} layers, {cfg.n_heads} heads, {cfg.n_kv_heads} kv heads, FFN {cfg.d_ffn}, vocab "
          f"{cfg.vocab_size}; batch {args.batch} x seq {args.seq} = {tokens} tokens/step; "
          f"{flops.param_count(cfg) / 1e6:.1f}M params, {fpt / 1e6:.1f} MFLOP/token")

    on_gpu = dev.type == "cuda"
    if on_gpu:
        print(f"device: {torch.cuda.get_device_name(dev)}")
    peaks_before = {} if on_gpu else peak_flops()
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    load, loads = OtherLoad(), []
    for rnd in range(args.repeats):
        order = runners if rnd % 2 == 0 else runners[::-1]
        for r in order:
            r.times += [r.step() for _ in range(args.steps)]
        loads.append(load())
        print(f"  round {rnd + 1}/{args.repeats}: " + ", ".join(
            f"{r.name} {statistics.median(r.times[-args.steps:]):.3f} s/step" for r in runners)
            + f"  (other processes: {loads[-1]:.2f} cores)", flush=True)
    peaks_after = {} if on_gpu else peak_flops()
    if not on_gpu and max(loads) > 0.25:
        print(f"WARNING: other processes used up to {max(loads):.2f} of {os.cpu_count()} cores during the timing; "
              "absolute figures are pessimistic, the alternating rounds keep the ratio fair")

    if on_gpu:
        peak = flops.peak_flops(dev)
        print(f"bf16 dense spec peak: {peak / 1e12:.0f} TFLOP/s; peak memory "
              f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB (all models together)")
    else:
        peaks = {n: max(peaks_before[n], peaks_after[n]) for n in peaks_before}
        peak = max(peaks.values())
        print("bf16 matmul peak (GFLOP/s, best of before/after): "
              + ", ".join(f"n={n}: {p / 1e9:.0f}" for n, p in peaks.items()) + f"; using {peak / 1e9:.0f}")
    print()
    print(f"| implementation | s/step (median of {args.repeats}x{args.steps}) | tokens/s | MFU | final loss |")
    print("|---|---|---|---|---|")
    rates = {}
    for r in runners:
        med = statistics.median(r.times)
        rates[r.name] = tokens / med
        print(f"| {r.name} | {med:.3f} | {tokens / med:,.0f} | {tokens / med * fpt / peak:.1%} | {r.last_loss:.4f} |")
    a = runners[0]
    for b in runners[1:]:
        print(f"\nratio {a.name} / {b.name}: {rates[a.name] / rates[b.name]:.2f}x "
              f"(per-round ratios: " + ", ".join(
                  f"{statistics.median(b.times[i:i + args.steps]) / statistics.median(a.times[i:i + args.steps]):.2f}"
                  for i in range(0, len(a.times), args.steps)) + ")")


if __name__ == "__main__":
    main()
