from __future__ import annotations

from pathlib import Path

from careloop.core.hardware import native_bf16

X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr avx2 avx512f avx512dq avx512bw avx512vl"


def cpuinfo(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name  # one file per case: the answer is cached per path
    path.write_text(text)
    return path


def test_avx512_bf16_and_amx_count_as_native_bf16(tmp_path: Path) -> None:
    assert native_bf16(cpuinfo(tmp_path, "zen4", f"processor\t: 0\nflags\t\t: {X86_FLAGS} avx512_bf16\n"))
    assert native_bf16(cpuinfo(tmp_path, "sapphire", f"flags\t\t: {X86_FLAGS} amx_bf16 amx_tile\n"))


def test_avx512_without_bf16_is_not_native(tmp_path: Path) -> None:
    assert not native_bf16(cpuinfo(tmp_path, "skylake", f"flags\t\t: {X86_FLAGS} avx512_fp16 avx512_vnni\n"))
    assert not native_bf16(cpuinfo(tmp_path, "zen3", "flags\t\t: fpu sse4_2 avx avx2 fma\n"))


def test_arm_bf16_feature_counts(tmp_path: Path) -> None:
    assert native_bf16(cpuinfo(tmp_path, "graviton3", "processor\t: 0\nFeatures\t: fp asimd aes sve bf16 i8mm\n"))
    assert not native_bf16(cpuinfo(tmp_path, "graviton2", "processor\t: 0\nFeatures\t: fp asimd aes\n"))


def test_a_flag_must_match_whole(tmp_path: Path) -> None:
    # "bf16" in a model name elsewhere in the file, or as part of a longer flag, is not the feature.
    assert not native_bf16(cpuinfo(tmp_path, "odd", "model name\t: bf16 box\nflags\t\t: avx2 xbf16y\n"))


def test_an_unreadable_cpuinfo_means_no_bf16(tmp_path: Path) -> None:
    assert not native_bf16(tmp_path / "missing")
