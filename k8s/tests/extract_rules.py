"""Write the plain rule-group file promtool and Prometheus read, from the PrometheusRule CR in k8s/base.

    python k8s/tests/extract_rules.py OUT.yaml [--for 2s]

`--for` replaces every alert's `for:` (the integration test uses seconds instead of minutes).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

CR_PATH = Path(__file__).resolve().parent.parent / "base" / "prometheus-rules.yaml"


def rule_groups(cr_path: Path = CR_PATH, for_override: str | None = None) -> dict[str, Any]:
    """The CR's `spec` (its `groups`), with every `for:` replaced when asked."""
    cr = yaml.safe_load(cr_path.read_text())
    if cr.get("kind") != "PrometheusRule":
        raise ValueError(f"{cr_path} is not a PrometheusRule")
    groups = cr["spec"]["groups"]
    if for_override is not None:
        for group in groups:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = for_override
    return {"groups": groups}


def write_rules(out: Path, cr_path: Path = CR_PATH, for_override: str | None = None) -> Path:
    """Write the rule file; returns its path."""
    out.write_text(yaml.safe_dump(rule_groups(cr_path, for_override), sort_keys=False))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--for", dest="for_override", default=None)
    args = parser.parse_args()
    print(write_rules(args.out, for_override=args.for_override))
