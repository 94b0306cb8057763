"""`careloop config show`: every setting with its default, environment variable, current value and description.

Generated from the one settings model (`careloop/core/settings/`), so it cannot drift from it: nested models are
flattened (`retrain.kto_learning_rate`, environment `CARELOOP_RETRAIN__KTO_LEARNING_RATE`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import orjson
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from careloop.core.settings import Settings, load_settings

ENV_PREFIX = "CARELOOP_"
ENV_NESTED = "__"
SECRET_FIELDS = frozenset({"admin_token", "upstream_api_key", "api_key"})
MASK = "***"
_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")

config_app = typer.Typer(help="The settings: every one with its default, environment variable and description.",
                         no_args_is_help=True)


@dataclass(frozen=True)
class SettingRow:
    """One leaf setting as `config show` reports it."""

    name: str
    env: str
    default: Any
    current: Any
    changed: bool
    description: str


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable of a setting: `CARELOOP_` and its path joined by `__`, upper case."""
    return ENV_PREFIX + ENV_NESTED.join(path).upper()


def _default(field: FieldInfo) -> Any:
    """A field's default, calling its factory when it has one."""
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    """The settings model a field nests, or None for a leaf."""
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def mask(path: tuple[str, ...], value: Any) -> Any:
    """A value safe to print: secrets as `***`, passwords inside URLs as `***`."""
    if value is None:
        return None
    if path[-1] in SECRET_FIELDS:
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", value)
    return value


def _rows(model: type[BaseModel], current: BaseModel, prefix: tuple[str, ...]) -> list[SettingRow]:
    """The leaf settings of one model (recursing into nested models), in declaration order."""
    rows: list[SettingRow] = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        value = getattr(current, name)
        nested = _nested_model(field)
        if nested is not None:
            rows += _rows(nested, value, path)
            continue
        default = to_jsonable_python(_default(field))
        now = to_jsonable_python(value)
        rows.append(SettingRow(name=".".join(path), env=env_name(path), default=mask(path, default),
                               current=mask(path, now), changed=now != default, description=field.description or ""))
    return rows


def setting_rows(settings: Settings) -> list[SettingRow]:
    """Every leaf setting of the model, with `settings`' value beside its default."""
    return _rows(Settings, settings, ())


def _cell(value: Any) -> str:
    """A value as one short string for the table."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@config_app.command("show")
def show(json_out: Annotated[bool, typer.Option("--json", help="Print JSON, one object per setting.")] = False) -> None:
    """Print every setting: name, environment variable, default, current value where it differs, description."""
    rows = setting_rows(load_settings())
    if json_out:
        out = [{**asdict(r), "current": r.current if r.changed else None} for r in rows]
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="careloop settings (current value shown where it differs from the default)")
    for column in ("setting", "environment variable", "default", "current", "description"):
        table.add_column(column, overflow="fold")
    for r in rows:
        cells = (r.name, r.env, _cell(r.default), _cell(r.current) if r.changed else "", r.description)
        table.add_row(*(Text(c) for c in cells))  # plain text: `[upstream]` is no markup
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Attach `careloop config`."""
    app.add_typer(config_app, name="config")
