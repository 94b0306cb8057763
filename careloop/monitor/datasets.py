"""Labelled data for judges: XSTest human labels, MedSafetyBench, MedQuAD, the project's seed set, CARES-18K."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from careloop.core.messages import last_user_message
from careloop.monitor.scoring import normalize_class

XSTEST_MODELS: tuple[str, ...] = ("gpt4", "llama2new", "mistralinstruct")

# The eight CARES principles as the project's seed set numbers them (principle_index 1-8).
CARES_PRINCIPLES: dict[int, str] = {
    1: "Patient privacy and consent",
    2: "Clinical ethics and professional conduct",
    3: "Discrimination and healthcare bias",
    4: "Health misinformation",
    5: "Self-harm and dangerous self-treatment",
    6: "Illicit drugs and controlled substances",
    7: "Violence, weapons and harm to others",
    8: "Fraud, insurance abuse and unlicensed practice",
}
CARES_METHODS: tuple[str, ...] = ("direct", "indirect", "obfuscated", "role_play")


class DatasetError(ValueError):
    """A data file is missing, unreadable or not in the expected schema."""


@dataclass(frozen=True)
class LabelledExample:
    """One labelled item: the chat messages, optionally a response, and the labels known for it.

    `harm_level` is None where the source does not grade the prompt; `response_class` is None where there is
    no labelled response. `group` names the source model or generator, so splits can hold out whole sources.
    """

    id: str
    messages: list[dict[str, Any]]
    response: str | None
    response_class: str | None
    harm_level: int | None
    source: str
    group: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message."""
        return last_user_message(self.messages)


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    with path.open(encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected an object per line")
            yield row


def _user(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def load_xstest(data_dir: Path, models: Sequence[str] = XSTEST_MODELS,
                agreed_only: bool = False) -> list[LabelledExample]:
    """XSTest v2 completions with the human label as response class (safe prompts get harm level 0)."""
    prompt_rows = {row["id"].rsplit("-", 1)[-1]: row for row in _read_jsonl(data_dir / "xstest" / "prompts.jsonl")}
    out: list[LabelledExample] = []
    for model in models:
        for row in _read_jsonl(data_dir / "xstest" / f"completions_{model}.jsonl"):
            if agreed_only and not row.get("annotators_agree", True):
                continue
            number = str(row["id"]).split("-")[1]
            meta_prompt = prompt_rows.get(number, {})
            safe = meta_prompt.get("label") == "safe"
            out.append(LabelledExample(
                id=str(row["id"]), messages=_user(row["prompt"]), response=str(row["response"]),
                response_class=normalize_class(row["human_label"]), harm_level=0 if safe else None,
                source="xstest", group=model,
                meta={"type": row.get("type"), "prompt_label": meta_prompt.get("label"),
                      "annotators_agree": row.get("annotators_agree"),
                      "gpt4_judge_label": row.get("gpt4_judge_label")},
            ))
    return out


def load_medsafetybench(data_dir: Path, response_class: str | None = "Refuse") -> list[LabelledExample]:
    """MedSafetyBench harmful requests with their written safe responses (labelled `response_class`).

    The harm level is not graded by the source (None); every request is harmful (h >= 1, in meta).
    """
    cls = normalize_class(response_class) if response_class else None
    return [
        LabelledExample(id=str(row["id"]), messages=_user(row["prompt"]), response=row.get("safe_response"),
                        response_class=cls if row.get("safe_response") else None, harm_level=None,
                        source="medsafetybench", group=f"medsafetybench:{row.get('generator', '')}",
                        meta={"ama_principle": row.get("ama_principle"), "harmful": True})
        for row in _read_jsonl(data_dir / "medsafetybench" / "train.jsonl")
    ]


def load_medquad(data_dir: Path, limit: int | None = None) -> list[LabelledExample]:
    """MedQuAD consumer-health questions (harm level 0) with the reference answer as an Accept."""
    out: list[LabelledExample] = []
    for row in _read_jsonl(data_dir / "medquad" / "questions.jsonl"):
        answer = row.get("answer") or None
        out.append(LabelledExample(id=str(row["id"]), messages=_user(row["prompt"]), response=answer,
                                   response_class="Accept" if answer else None, harm_level=0,
                                   source="medquad", group=f"medquad:{row.get('source', '')}",
                                   meta={"qtype": row.get("qtype")}))
        if limit is not None and len(out) >= limit:
            break
    return out


CARES_COLUMNS = ("prompt", "harmful_level", "principle_index", "method")


def _cares_rows(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - pyarrow ships with the train extra
            raise DatasetError("reading parquet needs pyarrow (pip install pyarrow)") from exc
        if not path.is_file():
            raise DatasetError(f"data file not found: {path}")
        yield from pq.read_table(path).to_pylist()
    elif suffix in (".jsonl", ".json"):
        yield from _read_jsonl(path)
    else:
        raise DatasetError(f"{path}: expected a .parquet or .jsonl file")


def load_cares(path: Path, source: str = "cares") -> list[LabelledExample]:
    """Prompts in CARES-18K's published schema (prompt, harmful_level, principle_index, method, base_prompt)."""
    out: list[LabelledExample] = []
    for i, row in enumerate(_cares_rows(path)):
        missing = [c for c in CARES_COLUMNS if c not in row]
        if missing:
            raise DatasetError(f"{path}: row {i} lacks column(s) {', '.join(missing)} of the CARES schema")
        try:
            level = int(row["harmful_level"])
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: row {i}: harmful_level {row['harmful_level']!r} is not 0-3") from None
        if level not in (0, 1, 2, 3):
            raise DatasetError(f"{path}: row {i}: harmful_level {level} is not 0-3")
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DatasetError(f"{path}: row {i}: empty prompt")
        principle = row.get("principle_index")
        out.append(LabelledExample(
            id=str(row.get("id", f"{source}-{i}")), messages=_user(prompt), response=None, response_class=None,
            harm_level=level, source=source, group=f"{source}:{row.get('method')}",
            meta={"principle_index": principle, "method": row.get("method"),
                  "base_prompt": row.get("base_prompt")},
        ))
    return out


def load_seed(data_dir: Path) -> list[LabelledExample]:
    """The project's own graded seed set (data/seed/prompts.jsonl, written in the CARES schema)."""
    return load_cares(data_dir / "seed" / "prompts.jsonl", source="seed")


def load_smollm2(data_dir: Path) -> list[LabelledExample]:
    """SmolLM2-135M's own replies labelled by the project (data/smollm2/): the judge's in-domain set.

    `group` is the prompt source (medsafetybench, seed, medquad, borderline), so audits can hold out whole
    sources; replies the labellers marked off-topic keep their label (Accept) and say so in `meta`.
    """
    path = data_dir / "smollm2" / "labelled.jsonl"
    if not path.exists():
        return []
    return [
        LabelledExample(id=row["id"], messages=_user(row["prompt"]), response=row["response"],
                        response_class=normalize_class(row["response_class"]), harm_level=int(row["harm_level"]),
                        source="smollm2", group=row["source"],
                        meta={"variant": row["variant"], "off_topic": bool(row.get("off_topic"))})
        for row in _read_jsonl(path)
    ]


def load_labelled_responses(path: Path) -> list[LabelledExample]:
    """A generic labelled file for `judge audit`: JSONL (or CSV) rows with prompt or messages, response, labels.

    Accepted fields: `response` (or `completion`, as in the original XSTest files); the label in
    `response_class`, `human_label` or `final_label` (accept/refuse/partial_refusal, 1_full_compliance too);
    optionally `harm_level` / `harmful_level`; `group` or `model` names the source.
    """
    out: list[LabelledExample] = []
    rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    for i, row in enumerate(rows):
        messages = row.get("messages") or (_user(row["prompt"]) if row.get("prompt") else None)
        if not messages or not isinstance(messages, list):
            raise DatasetError(f"{path}: row {i}: needs `prompt` or `messages`")
        response = row.get("response", row.get("completion"))
        label = row.get("response_class") or row.get("human_label") or row.get("final_label")
        try:
            cls = normalize_class(label) if label else None
        except ValueError as exc:
            raise DatasetError(f"{path}: row {i}: {exc}") from None
        harm = row.get("harm_level", row.get("harmful_level"))
        if harm in (None, ""):
            harm = None
        elif str(harm).strip() not in ("0", "1", "2", "3"):
            raise DatasetError(f"{path}: row {i}: harm level {harm} is not 0-3")
        out.append(LabelledExample(
            id=str(row.get("id", i)), messages=messages, response=response, response_class=cls,
            harm_level=None if harm is None else int(harm), source=path.stem,
            group=str(row.get("group", row.get("model", path.stem))), meta={},
        ))
    return out


def load_named(spec: str, data_dir: Path) -> list[LabelledExample]:
    """Resolve an audit data spec: `xstest[:model,...]`, `seed`, `medsafetybench`, `medquad`, or a file path."""
    name, _, arg = spec.partition(":")
    if name == "xstest":
        models = tuple(m for m in arg.split(",") if m) or XSTEST_MODELS
        unknown = [m for m in models if m not in XSTEST_MODELS]
        if unknown:
            raise DatasetError(f"unknown XSTest model(s) {unknown}; have {list(XSTEST_MODELS)}")
        return load_xstest(data_dir, models)
    if name == "seed":
        return load_seed(data_dir)
    if name == "medsafetybench":
        return load_medsafetybench(data_dir)
    if name == "medquad":
        return load_medquad(data_dir)
    if name == "smollm2":
        groups = {g for g in arg.split(",") if g}
        own = load_smollm2(data_dir)
        return [e for e in own if e.group in groups] if groups else own
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"no dataset {spec!r}: not a known name (xstest, seed, medsafetybench, medquad, "
                           "smollm2) nor a file")
    if path.suffix == ".parquet":
        return load_cares(path)
    if path.suffix.lower() == ".csv":
        return load_labelled_responses(path)
    rows = list(_read_jsonl(path))
    if rows and "harmful_level" in rows[0] and "response" not in rows[0]:
        return load_cares(path)
    return load_labelled_responses(path)
