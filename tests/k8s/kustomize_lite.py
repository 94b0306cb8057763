"""A small kustomize for the subset k8s/ uses, so the manifests are rendered and validated where neither
`kustomize` nor `kubectl` is installed. tests/k8s/test_kustomize_lite.py checks it against the real one.

Supported: resources (files and kustomization dirs), namespace, labels (metadata only), configMapGenerator /
secretGenerator (literals, files, behavior create|merge|replace, options.labels, no name hash), images,
replicas, patches (strategic merge by `name`, `$patch: delete`; JSON 6902 add/replace/remove with a target),
replacements (fieldPaths with `[name=x]` selectors).
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
_SELECTOR = re.compile(r"^\[(\w[\w.-]*)=(.*)\]$")


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not support, or is broken."""


def build(path: Path) -> list[Obj]:
    """Render the kustomization in directory `path`."""
    kfile = path / "kustomization.yaml"
    if not kfile.exists():
        raise KustomizeError(f"no kustomization.yaml in {path}")
    k: Obj = yaml.safe_load(kfile.read_text()) or {}
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "generatorOptions", "configMapGenerator",
             "secretGenerator", "images", "replicas", "patches", "replacements"}
    if set(k) - known:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(set(k) - known)}")
    objs: list[Obj] = []
    for res in k.get("resources", []):
        target = (path / res).resolve()
        if target.is_dir():
            objs += build(target)
        else:
            objs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    _generate(path, k, objs)
    for patch in k.get("patches", []):
        _patch(path, patch, objs)
    for obj in objs:
        if k.get("namespace") and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = k["namespace"]
            for subject in obj.get("subjects", []) if obj["kind"] == "RoleBinding" else []:
                if subject["kind"] == "ServiceAccount":
                    subject["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for obj in objs:
            _set_image(obj, image)
    for rep in k.get("replicas", []):
        for obj in objs:
            if obj["metadata"]["name"] == rep["name"] and obj["kind"] in {"Deployment", "StatefulSet"}:
                obj["spec"]["replicas"] = rep["count"]
    for repl in k.get("replacements", []):
        _replace(repl, objs)
    return objs


def _generate(path: Path, k: Obj, objs: list[Obj]) -> None:
    """Add (or merge into, or replace) ConfigMaps and Secrets from the generators."""
    if not k.get("generatorOptions", {}).get("disableNameSuffixHash") and (
            k.get("configMapGenerator") or k.get("secretGenerator")):
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            if gen.get("behavior", "create") == "create":
                raise KustomizeError("generated names need generatorOptions.disableNameSuffixHash: true")
    for kind, gens in (("ConfigMap", k.get("configMapGenerator", [])), ("Secret", k.get("secretGenerator", []))):
        for gen in gens:
            data: dict[str, str] = {}
            for lit in gen.get("literals", []):
                key, _, value = lit.partition("=")
                data[key] = value
            for spec in gen.get("files", []):
                key, _, rel = spec.rpartition("=")
                file = path / rel
                data[key or file.name] = file.read_text()
            if kind == "Secret":
                data = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
            behavior = gen.get("behavior", "create")
            existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == gen["name"]]
            if behavior == "create":
                obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": data}
                if kind == "Secret":
                    obj["type"] = "Opaque"
                labels = gen.get("options", {}).get("labels")
                if labels:
                    obj["metadata"]["labels"] = dict(labels)
                objs.append(obj)
            elif len(existing) != 1:
                raise KustomizeError(f"{behavior} of {kind}/{gen['name']}: not in the resources")
            elif behavior == "merge":
                existing[0].setdefault("data", {}).update(data)
            elif behavior == "replace":
                existing[0]["data"] = data
            else:
                raise KustomizeError(f"unknown generator behavior {behavior!r}")


def _matches(obj: Obj, target: Obj) -> bool:
    return all(obj["kind"] == v if f == "kind" else obj["metadata"]["name"] == v if f == "name" else False
               for f, v in target.items())


def _patch(path: Path, patch: Obj, objs: list[Obj]) -> None:
    if "path" in patch:
        body: Obj = yaml.safe_load((path / patch["path"]).read_text())
        targets = [o for o in objs if o["kind"] == body["kind"] and o["metadata"]["name"] == body["metadata"]["name"]]
        if len(targets) != 1:
            raise KustomizeError(f"patch {patch['path']}: target not found")
        merged = _merge(targets[0], body)
        targets[0].clear()
        targets[0].update(merged)
        return
    ops = yaml.safe_load(patch["patch"])
    for obj in (o for o in objs if _matches(o, patch["target"])):
        for op in ops:
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
            node: Any = obj
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            key: Any = int(last) if isinstance(node, list) and last != "-" else last
            if op["op"] in ("replace", "add"):
                if isinstance(node, list) and op["op"] == "add":
                    node.insert(len(node) if key == "-" else key, op["value"])
                else:
                    node[key] = op["value"]
            elif op["op"] == "remove":
                del node[key]
            else:
                raise KustomizeError(f"unsupported JSON patch op {op['op']!r}")


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge: maps merge, lists of named maps merge by name (`$patch: delete` removes), others replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else _strip(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(x, dict) and "name" in x for x in base + patch) and base:
        # As kustomize orders them: the patch's items first (merged into their base item), then the rest.
        by_name = {b["name"]: b for b in base}
        named = {item["name"] for item in patch}
        out_list = [_merge(by_name[item["name"]], item) if item["name"] in by_name else _strip(item)
                    for item in patch if item.get("$patch") != "delete"]
        return out_list + [copy.deepcopy(b) for b in base if b["name"] not in named]
    return _strip(patch)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def _set_image(obj: Obj, image: Obj) -> None:
    for c in _containers(obj):
        name, _, tag = c["image"].partition(":")
        if name == image["name"]:
            c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")


def _walk(node: Any, parts: list[str], create: bool = False) -> tuple[Any, Any]:
    """The parent container and key that a kustomize fieldPath (with [name=x] selectors) names."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        m = _SELECTOR.match(part)
        if m:
            key: Any = next(j for j, item in enumerate(node) if str(item.get(m.group(1))) == m.group(2))
        else:
            key = part
        if last:
            return node, key
        node = node[key]
    raise KustomizeError("empty fieldPath")


def _split(field_path: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]|[^.\[\]]+", field_path)


def _replace(repl: Obj, objs: list[Obj]) -> None:
    src = next(o for o in objs if _matches(o, {k: v for k, v in repl["source"].items() if k in ("kind", "name")}))
    parent, key = _walk(src, _split(repl["source"]["fieldPath"]))
    value = parent[key]
    for target in repl["targets"]:
        for obj in (o for o in objs if _matches(o, target["select"])):
            for fp in target["fieldPaths"]:
                parent, key = _walk(obj, _split(fp))
                parent[key] = value
