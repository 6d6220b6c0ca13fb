"""Turn a pydantic `ValidationError` into one human line per bad key, with the allowed values.

The schema lives in `trainers.config.schema`; this module only reads it. The functions take the root
model class (`TrainConfig`) as a parameter rather than importing it, so `trainers.config.schema` can
import this module without a cycle. Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

__all__ = ["describe_problems", "describe_validation_error", "validation_problems"]

#: A position in the validated data, as pydantic reports it: keys and list indices.
Location = tuple[int | str, ...]


def describe_validation_error(
    error: ValidationError, *, root: type[BaseModel], what: str = "config"
) -> str:
    """All problems of `error`, one line each; `root` is the model that was validated, `what`
    names it in the message."""
    return describe_problems(validation_problems(error, root=root), what=what)


def validation_problems(error: ValidationError, *, root: type[BaseModel]) -> list[str]:
    """One line per problem of `error` ("key: what is wrong"), each once, in pydantic's order."""
    items = error.errors(include_url=False)
    # A list whose items are all invalid is also reported as too short; the items say why.
    lines = [
        _describe_one(item, root)
        for item in items
        if not (item["type"] == "too_short" and _has_errors_inside(item["loc"], items))
    ]
    return list(dict.fromkeys(lines))


def describe_problems(problems: Sequence[str], *, what: str) -> str:
    """The message for every problem of one file: a single problem on the first line, several
    counted there and listed one per line below it (a problem of several lines, an enqueued
    config's say, indented as a block)."""
    unique = list(dict.fromkeys(problems))
    if len(unique) == 1:
        return f"invalid {what}: {unique[0]}"
    listed = "\n  ".join(problem.replace("\n", "\n  ") for problem in unique)
    return f"invalid {what} ({len(unique)} problems):\n  {listed}"


def _key_path(location: Location) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "literal[", "float", "str", "int")):
            # pydantic adds union-member tags to the location; they are not keys.
            continue
        else:
            path += f".{part}" if path else part
    return path or "<top level>"


def _has_errors_inside(location: Sequence[int | str], items: Sequence[Any]) -> bool:
    """Whether another error is about something inside `location` (a list's item, say)."""
    depth = len(location)
    return any(
        len(item["loc"]) > depth and tuple(item["loc"][:depth]) == tuple(location) for item in items
    )


def _describe_one(item: Mapping[str, Any], root: type[BaseModel]) -> str:
    location = tuple(item["loc"])
    key = _key_path(location)
    kind = item["type"]
    context = item.get("ctx") or {}
    got = item.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(location[:-1], root)
        return f"{key}: unknown key; allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "literal_error":
        return f"{key}: got {got!r}; allowed: {context.get('expected')}"
    bounds = {
        "greater_than": f"> {context.get('gt')}",
        "greater_than_equal": f">= {context.get('ge')}",
        "less_than": f"< {context.get('lt')}",
        "less_than_equal": f"<= {context.get('le')}",
    }
    if kind in bounds:
        return f"{key}: got {got!r}; must be {bounds[kind]}{_range_hint(location, root)}"
    if kind in {"too_short", "too_long"}:
        return f"{key}: {item['msg']}"
    if kind == "value_error":
        message = str(context.get("error", item["msg"]))
        # Model-level checks start with the key they are about, relative to their model.
        if message.split(" ")[0].endswith(":"):
            return message if key == "<top level>" else f"{key}.{message}"
        return f"{key}: {message}"
    expected = _expected_type(location, root)
    return f"{key}: got {got!r}; expected {expected}" if expected else f"{key}: {item['msg']}"


def _field_at(location: Location, root: type[BaseModel]) -> Any:
    """The pydantic FieldInfo at a location, walking nested models and tuples."""
    model: Any = root
    field = None
    for part in location:
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        field = fields[part]
        model = _model_inside(field.annotation)
    return field


def _model_inside(annotation: Any) -> Any:
    """The first pydantic model in an annotation (`X`, `X | None`, `tuple[X, ...]`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_inside(argument)
        if found is not None:
            return found
    return None


def _allowed_keys(location: Location, root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in location:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_inside(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _range_hint(location: Location, root: type[BaseModel]) -> str:
    field = _field_at(location, root)
    if field is None:
        return ""
    low = high = None
    for constraint in field.metadata:
        for bound in ("ge", "gt"):
            if getattr(constraint, bound, None) is not None:
                low = getattr(constraint, bound)
        for bound in ("le", "lt"):
            if getattr(constraint, bound, None) is not None:
                high = getattr(constraint, bound)
    if low is None and high is None:
        return ""
    low_text = "-inf" if low is None else low
    high_text = "inf" if high is None else high
    return f" (allowed: {low_text} .. {high_text})"


def _expected_type(location: Location, root: type[BaseModel]) -> str:
    field = _field_at(location, root)
    if field is None:
        return ""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, get_args(annotation)))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    if get_origin(annotation) is tuple:
        return "a list"
    parts = [
        names.get(argument, getattr(argument, "__name__", str(argument)))
        for argument in get_args(annotation)
    ]
    return " or ".join(part.replace("NoneType", "null") for part in parts)
