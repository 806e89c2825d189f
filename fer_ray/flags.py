"""Command-line flags generated from a pydantic config's fields.

A field's name gives the flag (``batch_size`` -> ``--batch-size``, or its ``flag`` extra), its
description the help, its default the default, a ``Literal`` the choices, and its constraints
check the flag's text while parsing: ``--epochs 0`` is a usage error (exit 2) from the same
``ge=1`` the config enforces for Python callers and YAML. A bool that defaults to True becomes
``--no-NAME``. Rules that tie fields together run when the config is built; ``one_line`` turns
their ``ValidationError`` into the single error line the command prints.
"""

import argparse
import types
import typing
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError


def flag(model: type[BaseModel], name: str) -> str:
    """The command-line flag of one of ``model``'s fields."""
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "flag" in extra:
        return extra["flag"]
    prefix = "--no-" if field.annotation is bool and field.default is True else "--"
    return prefix + name.replace("_", "-")


def fields(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``model``'s field names, in order, less ``exclude``: a stage's flags are its config's
    fields unless it says otherwise, so a new setting gets its flag without another list."""
    unknown = set(exclude) - set(model.model_fields)
    if unknown:
        raise KeyError(f"{model.__name__} has no fields {sorted(unknown)}")
    return tuple(name for name in model.model_fields if name not in exclude)


def add_flags(parser, model: type[BaseModel], names) -> None:
    """Add a flag to ``parser`` (or an argument group) for each of ``model``'s fields in ``names``."""
    for name in names:
        field = model.model_fields[name]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        option = flag(model, name)
        if field.annotation is bool:
            off = option.startswith("--no-")
            parser.add_argument(option, dest=name, action="store_false" if off else "store_true",
                                help=f"no {field.description}" if off and field.description else field.description)
            continue
        kwargs = {"dest": name, "metavar": option[2:].upper().replace("-", "_")}
        help_text, annotation = field.description or "", _optional_inner(field.annotation)
        if typing.get_origin(annotation) in (tuple, list):  # tuple[X, ...]: one or more values; tuple[X, X]: two
            items = typing.get_args(annotation)
            annotation, kwargs["nargs"] = items[0], "+" if items[-1] is Ellipsis else len(items)
        if kwargs.get("nargs") == "+":
            kwargs["metavar"] = kwargs["metavar"].removesuffix("S")  # --models MODEL [MODEL ...]
        elif kwargs.get("nargs") == 2:  # a pair is a range
            kwargs["metavar"] = ("MIN", "MAX")
        choices = _choices(annotation)
        if choices and kwargs.get("nargs"):  # the list would repeat in the usage line: say it once
            help_text += f" (each one of: {', '.join(choices)})"
        elif choices:
            del kwargs["metavar"]
        if choices:
            kwargs["choices"] = choices
        elif kwargs.get("nargs"):  # the field's length and range rules apply once the config is built
            kwargs["type"] = parse_as(annotation)
        else:
            kwargs["type"] = parse_as(Annotated[annotation, *field.metadata] if field.metadata else annotation)
        if kwargs.get("nargs") and default is not None:
            default = list(default)
        if default not in (None, []):
            help_text += f" (default {' '.join(map(str, default)) if isinstance(default, list) else default})"
        kwargs["help"] = help_text.strip() or None
        parser.add_argument(option, default=default, required=field.is_required(), **kwargs)


def one_line(exc: ValidationError) -> str:
    """A config's ValidationError as one line naming the flags: ``--lr: input should be a finite
    number, got nan`` (pydantic's own text spans several lines and names fields, not flags)."""
    parts = []
    for error in exc.errors():
        model, names = _model_named(exc.title), []
        for key in error["loc"]:
            if model is None or not isinstance(key, str) or key not in model.model_fields:
                names.append(str(key))
                model = None
                continue
            names.append(flag(model, key))
            inner = model.model_fields[key].annotation
            model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] != "value_error":  # our own rules already say what they got
            message = f"{message[:1].lower()}{message[1:]}, got {error['input']!r}"
        # a rule over a whole (nested) config names its flags itself
        parts.append(f"{names[-1]}: {message}" if names and model is None else message)
    return "; ".join(parts)


def _model_named(name: str, base: type = BaseModel) -> type[BaseModel] | None:
    """The loaded pydantic model class called ``name`` (a ValidationError knows only the name)."""
    for cls in base.__subclasses__():
        found = cls if cls.__name__ == name else _model_named(name, cls)
        if found is not None:
            return found
    return None


def _optional_inner(annotation):
    """X for Optional[X]; any other annotation as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 \
        else annotation


def _choices(annotation) -> tuple | None:
    """A Literal's values (also inside Optional), or None."""
    annotation = _optional_inner(annotation)
    return tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None


def parse_as(annotation):
    """argparse ``type``: a flag's text validated as a field of this (annotated) type would be."""
    adapter = TypeAdapter(annotation)

    def check(text: str):
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise argparse.ArgumentTypeError(f"{message[:1].lower()}{message[1:]}, got {text!r}") from None

    return check


AMOUNT = parse_as(Annotated[float, Field(ge=0, allow_inf_nan=False)])  # --batch-wait-ms: belongs to no config
