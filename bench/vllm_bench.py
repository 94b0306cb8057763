"""vLLM on CPU: which dtype to serve the embedded model in, here and on CPUs without native bf16.

For each dtype (and, with --emulate, each emulated CPU), start vLLM as `careloop up` does and measure:

1. startup: process start to `/health`;
2. one stream: 6 requests of 64 forced tokens (`ignore_eos`) one after another, seconds per reply;
3. sixteen streams: 16 concurrent requests of 128 forced tokens, generated tokens/s;
4. fidelity: greedy replies to 12 MedQuAD questions against transformers' own fp32 greedy replies (what the
   PEFT check and training compute): the share whose first six words agree, and the share identical.

--emulate adds CPUs without AVX-512 BF16: `avx512` (AVX-512 but no BF16, e.g. Intel Skylake/Cascade Lake)
and `avx2` (e.g. AMD Zen 2/3). vLLM, torch and oneDNN are told so (torch's CPU-capability checks patched in
every vLLM process, `ONEDNN_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`); it is an estimate of such a CPU, not one.

    .venv/bin/python bench/vllm_bench.py [--dtypes bfloat16,float32] [--emulate avx512,avx2] [--bind auto,0-1]
        [--json out.json]

Needs `careloop model prepare`. About 2-3 min per row on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from gateway_bench import Procs, free_port

from careloop.core.hardware import native_bf16
from careloop.core.settings import Settings
from careloop.monitor.datasets import load_medquad
from careloop.retrain.train import peft_greedy
from careloop.stack import vllm_command, vllm_env, wait_http

SPEED_PROMPT = "Explain how insulin lowers blood sugar, step by step, for a newly diagnosed patient."
EMULATION = {  # what each emulated CPU lacks: torch checks patched off, oneDNN and ATen capped
    "avx512": ({"_is_avx512_bf16_supported", "_is_amx_tile_supported"}, "AVX512_CORE", "avx512"),
    "avx2": ({"_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_avx512_supported"}, "AVX2", "avx2"),
}
SITECUSTOMIZE = """\
import os
_off = os.environ.get("CARELOOP_BENCH_CPU_OFF")
if _off:
    import torch
    for _name in _off.split(","):
        setattr(torch.cpu, _name, lambda: False)
"""


def emulation_env(isa: str | None, shim_dir: Path) -> dict[str, str]:
    """Environment that makes vLLM, torch and oneDNN behave as on a CPU of that ISA (none: this CPU)."""
    if not isa:
        return {}
    off, onednn, aten = EMULATION[isa]
    (shim_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {"CARELOOP_BENCH_CPU_OFF": ",".join(sorted(off)), "ONEDNN_MAX_CPU_ISA": onednn,
            "ATEN_CPU_CAPABILITY": aten, "PYTHONPATH": str(shim_dir)}


async def complete(client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], max_tokens: int,
                   forced: bool) -> tuple[str, int, float]:
    """One greedy chat completion: its text, generated tokens and seconds."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if forced:
        body["ignore_eos"] = True
    t = time.perf_counter()
    resp = await client.post("/v1/chat/completions", json=body)
    resp.raise_for_status()
    data = resp.json()
    return data["choices"][0]["message"]["content"], int(data["usage"]["completion_tokens"]), time.perf_counter() - t


async def measure(url: str, model: str, questions: list[str]) -> dict[str, Any]:
    """Latency, throughput and the greedy replies of one running vLLM."""
    speed = [{"role": "user", "content": SPEED_PROMPT}]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await complete(client, model, speed, 16, True)  # warm-up
        one = [await complete(client, model, speed, 64, True) for _ in range(6)]
        t = time.perf_counter()
        many = await asyncio.gather(*(complete(client, model, speed, 128, True) for _ in range(16)))
        wall = time.perf_counter() - t
        replies = [(await complete(client, model, [{"role": "user", "content": q}], 48, False))[0]
                   for q in questions]
    return {"reply_s": sum(s for _, _, s in one) / len(one),
            "stream_tok_s": sum(n for _, n, _ in one) / sum(s for _, _, s in one),
            "concurrent_tok_s": sum(n for _, n, _ in many) / wall, "replies": replies}


def run_one(settings: Settings, dtype: str, isa: str | None, questions: list[str], log_dir: Path,
            bind: str | None = None) -> dict[str, Any]:
    """Start vLLM in one dtype on one (possibly emulated) CPU and core binding, measure it, stop it."""
    port = free_port()
    cfg = settings.model_copy(update={"vllm_dtype": dtype, "vllm_port": port})
    shim = log_dir / f"shim-{isa}"
    shim.mkdir(exist_ok=True)
    env = {**vllm_env(cfg), **emulation_env(isa, shim)}
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    log = log_dir / f"vllm-{dtype}-{isa or 'native'}-{bind or 'default'}.log"
    procs = Procs()
    t = time.perf_counter()
    proc = procs.start(vllm_command(cfg), env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", None, 600)
        startup = time.perf_counter() - t
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", cfg.base_model, questions))
    finally:
        procs.stop(proc)
    return {"dtype": dtype, "cpu": isa or "native", "bind": env.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
            "startup_s": startup, **result}


def words(text: str, n: int = 6) -> list[str]:
    """The first n words of a reply."""
    return text.split()[:n]


def main() -> None:
    """Serve the model in each dtype on each CPU and print one table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--emulate", default="", help="comma-separated: avx512, avx2")
    ap.add_argument("--bind", default="", help="comma-separated VLLM_CPU_OMP_THREADS_BIND values to compare "
                    "(e.g. auto,0-1,nobind); default: what `careloop up` sets")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = Settings()
    questions = [ex.messages[-1]["content"] for ex in load_medquad(settings.data_dir)][::97][:12]
    reference = peft_greedy(settings.base_model_dir, None, questions, max_new_tokens=48)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        for isa in [None, *[e for e in args.emulate.split(",") if e]]:
            for dtype, bind in [(d, b) for d in args.dtypes.split(",") for b in args.bind.split(",")]:
                row = run_one(settings, dtype, isa, questions, Path(tmp), bind or None)
                row["agree6"] = sum(words(a) == words(b) for a, b in zip(row["replies"], reference, strict=True))
                row["identical"] = sum(a.strip() == b.strip() for a, b in zip(row["replies"], reference, strict=True))
                rows.append(row)
                print(f"{row['cpu']:>7} {dtype:>9} bind {row['bind']}: startup {row['startup_s']:.0f} s, "
                      f"reply {row['reply_s']:.2f} s, "
                      f"{row['concurrent_tok_s']:.0f} tok/s at 16", flush=True)
    print(f"\nthis CPU: native bf16 = {native_bf16()}; `vllm_dtype: auto` picks "
          f"{'bfloat16' if native_bf16() else 'float32'} here\n")
    print("| CPU | dtype | core binding | startup s | 64-token reply s | 1 stream tok/s | 16 streams tok/s "
          "| first 6 words as transformers fp32 | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cpu']} | {r['dtype']} | {r['bind']} | {r['startup_s']:.0f} | {r['reply_s']:.2f} "
              f"| {r['stream_tok_s']:.1f} "
              f"| {r['concurrent_tok_s']:.0f} | {r['agree6']}/{len(questions)} | {r['identical']}/{len(questions)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
