"""Typed typer options from a settings model: one `--x-y` flag per field of a `KgslbSettings`
model (`shared.settings`), shown in `--help` with its type, range, default and `KGSLB_X_Y`
variable, and completed by the shell (`kgslb --install-completion`).

The flags default to "not given"; the command receives the model filled by
`shared.settings.load_settings`, so the precedence stays defaults < environment < flags and a
bad value, from a flag or from the environment, is one line naming it, exit code 2.
"""

from __future__ import annotations

import functools
import inspect
import shutil
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import annotated_types
import typer
from pydantic.fields import FieldInfo
from rich.markup import escape
from typer.core import TyperCommand

from shared.settings import KgslbSettings, SettingsError, env_key, flag_name, load_settings

COMMAND_SKIPS = ("stream_replicas", "state_check_seconds")
"""Service settings the client commands (status, logs, ...) do not use: no flag for them."""
SHORT_FLAGS = {"output": "-o"}
RICH_HELP_COLUMNS = 120
"""Narrower than this, or into a pipe, `--help` is plain text: rich's tables would cut the
long flag and variable names (`KGSLB_TCP_CLIENT_QUERIES_PER_SECOND`) with an ellipsis."""


def command_name(ctx: Any) -> str:
    """`kgslb logs export`, whatever the program was called (`python -m kgslb`, a script)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["kgslb", *reversed(names)])


class SettingsCommand(TyperCommand):
    """A command whose flag errors (an unknown flag, a value of the wrong type) are one line on
    stderr and exit code 2, like a bad setting, instead of a usage box."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            print(f"{command_name(ctx)}: {message} (see --help)", file=sys.stderr)
            raise typer.Exit(2) from None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        wide = sys.stdout.isatty() and shutil.get_terminal_size().columns >= RICH_HELP_COLUMNS
        if wide:
            super().format_help(ctx, formatter)
            return
        markup, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = markup


def _plain_type(annotation: Any) -> Any:
    """`int | None` -> int; a union of several types stays as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _range(field: FieldInfo) -> str:
    """The bounds of a number field as click writes them: `0<=x<=65535`, `x>0`."""
    low = high = ""
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = f"{bound.ge}<="
        elif isinstance(bound, annotated_types.Gt):
            low = f"{bound.gt}<"
        elif isinstance(bound, annotated_types.Le):
            high = f"<={bound.le}"
        elif isinstance(bound, annotated_types.Lt):
            high = f"<{bound.lt}"
    return f"{low}x{high}" if low or high else ""


def _complete_bool(incomplete: str) -> list[str]:
    return [word for word in ("true", "false") if word.startswith(incomplete)]


def _panel(model: type[KgslbSettings], name: str) -> str | None:
    """The help section of a field: that of the class declaring it (NATS, Service, DNS...)."""
    for cls in model.__mro__:
        if name in inspect.get_annotations(cls):
            panel: str | None = cls.__dict__.get("help_panel")
            return panel
    return None


def settings_option(model: type[KgslbSettings], name: str) -> inspect.Parameter:
    """The typer option of one field: typed (`<int>`, `<float>`, a choice, `<bool>`, `<str>`), not
    given by default, its help naming the environment variable."""
    field = model.model_fields[name]
    kind = _plain_type(field.annotation)
    extra: dict[str, Any] = {}
    if kind is bool:
        # A value, as before (`--home true`, like KGSLB_HOME=true), not a --x/--no-x switch.
        annotation: Any = str | None
        extra = {"metavar": "<bool>", "autocompletion": _complete_bool}
    elif kind in (int, float, str, Path) or typing.get_origin(kind) is Literal:
        annotation = kind | None
    else:  # an IP address, ...: text, validated by the model
        annotation = str | None
        extra = {"metavar": "<address>" if "IP" in str(kind) else "<str>"}
    # The default is shown ([default: 1053]) but used only when neither flag nor variable is
    # given: the wrapper passes on the flags given on the command line alone.
    default = field.default
    if kind is bool:
        default = str(default).lower()
    shown_default = not (field.default in (None, "") or not field.repr)
    bounds = _range(field)
    help_text = " ".join(
        part
        for part in (
            escape(field.description or name.replace("_", " ")),
            f"({bounds})" if bounds else "",
            f"(env {env_key(name)})",
        )
        if part
    )
    option = typer.Option(
        default,
        flag_name(name),
        *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else []),
        help=help_text,
        show_default=shown_default,
        rich_help_panel=_panel(model, name),
        **extra,
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def settings_flags(
    model: type[KgslbSettings], skip: tuple[str, ...] = COMMAND_SKIPS
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one typed option per setting of `model` (but `skip`) and pass it
    `settings`: the model filled from defaults, `KGSLB_*` variables and the options given.
    Register the command with `cls=SettingsCommand` for one-line flag errors."""
    names = [name for name in model.model_fields if name not in skip]
    context = inspect.Parameter(
        "settings_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
    )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "settings"]
        added = [settings_option(model, name) for name in names] + [context]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(context.name)
            given = {name: kwargs.pop(name) for name in names}
            for name in names:
                source = ctx.get_parameter_source(name)
                if source is None or source.name != "COMMANDLINE":
                    given[name] = None  # the default: the environment's or the model's
            try:
                settings = load_settings(model, given)
            except SettingsError as exc:
                print(f"{command_name(ctx)}: {exc}", file=sys.stderr)
                raise typer.Exit(2) from None
            return command(*args, settings=settings, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{p.name: p.annotation for p in kept},
            **{p.name: p.annotation for p in added},
        }
        return wrapper

    return decorate
