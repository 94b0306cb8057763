"""The vLLM benchmark's CPU emulation: a process started with it must see the CPU it pretends to be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from careloop.core.settings import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from vllm_bench import emulation_env

PROBE = ("import json, torch; print(json.dumps({'bf16': torch.cpu._is_avx512_bf16_supported(), "
         "'amx': torch.cpu._is_amx_tile_supported(), 'avx512': torch.cpu._is_avx512_supported()}))")


def seen_by_child(env: dict[str, str]) -> dict[str, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True, timeout=120)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("isa", "avx512"), [("avx512", True), ("avx2", False)])
def test_an_emulated_cpu_has_no_bf16_in_every_child(tmp_path: Path, isa: str, avx512: bool) -> None:
    env = emulation_env(isa, tmp_path)
    seen = seen_by_child(env)
    assert not seen["bf16"] and not seen["amx"]
    if not avx512:
        assert not seen["avx512"]
    assert env["ONEDNN_MAX_CPU_ISA"] in {"AVX512_CORE", "AVX2"} and env["ATEN_CPU_CAPABILITY"] == isa


def test_no_emulation_leaves_the_cpu_alone(tmp_path: Path) -> None:
    assert emulation_env(None, tmp_path) == {}
    assert not list(tmp_path.iterdir())
