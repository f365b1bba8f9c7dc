"""Search dimensions as they appear in a spec: a fixed value, a choice list, or a numeric range.

YAML forms, for any searchable key:

    kernel_size: 3                      # fixed
    kernel_size: [3, 5, 7]              # choice (also {choices: [3, 5, 7]})
    depth: {low: 2, high: 5}            # int range (inclusive), optional step
    learning_rate: {low: 1e-4, high: 1e-2, log: true}   # float range, optional log scale

`Annotated[Dim, dim(...)]` is a pydantic type that parses these forms into frozen value objects whose
errors quote the offending values (Optuna's lesson), so a spec error reads like a fix.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from annotated_types import GroupedMetadata
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

Kind = Literal["int", "float", "bool", "str"]


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None
    log: bool = False


Dim = Fixed | Choice | IntRange | FloatRange


def is_searchable(d: Dim) -> bool:
    return not isinstance(d, Fixed) and not (isinstance(d, Choice) and len(d.values) == 1)


def cardinality(d: Dim) -> int | None:
    """Number of distinct values, or None for a continuous range."""
    if isinstance(d, Fixed):
        return 1
    if isinstance(d, Choice):
        return len(d.values)
    if isinstance(d, IntRange):
        return (d.high - d.low) // d.step + 1 if not d.log else d.high - d.low + 1
    if d.step is not None:
        return int(math.floor((d.high - d.low) / d.step + 1e-9)) + 1
    return None


def describe(d: Dim) -> str:
    if isinstance(d, Fixed):
        return f"fixed {d.value!r}"
    if isinstance(d, Choice):
        return "one of " + ", ".join(repr(v) for v in d.values)
    scale = ", log scale" if d.log else ""
    step = f", step {d.step}" if d.step not in (None, 1) else ""
    kind = "int" if isinstance(d, IntRange) else "float"
    return f"{kind} in [{d.low}, {d.high}]{step}{scale}"


def to_yaml_form(d: Dim) -> Any:
    """The plain YAML value that parses back into `d` (used for hashing, dumps and the JSON schema)."""
    if isinstance(d, Fixed):
        return d.value
    if isinstance(d, Choice):
        return list(d.values)
    out: dict[str, Any] = {"low": d.low, "high": d.high}
    if d.log:
        out["log"] = True
    if d.step not in (None, 1):
        out["step"] = d.step
    return out


_REPR = reprlib.Repr()  # Python 3.11 takes no keyword arguments here
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 30


def shown(value: Any) -> str:
    """repr() for messages, cut short: a spec can alias a huge structure (YAML anchors) into any key."""
    return _REPR.repr(value)


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("nas_dim", message)


def did_you_mean(value: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class _Rule:
    kind: Kind
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    options: tuple[str, ...] = ()

    def bounds(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge}")
        if self.gt is not None:
            parts.append(f"> {self.gt}")
        if self.le is not None:
            parts.append(f"<= {self.le}")
        if self.lt is not None:
            parts.append(f"< {self.lt}")
        return " and ".join(parts)

    def scalar(self, v: Any, where: str = "") -> Any:
        """Check one concrete value; returns it normalised (int stays int, float becomes float)."""
        at = f" ({where})" if where else ""
        if self.kind == "str":
            if not isinstance(v, str) or v not in self.options:
                hint = did_you_mean(v, self.options) if isinstance(v, str) else ""
                raise _fail(f"expected one of {', '.join(self.options)}, got {shown(v)}{at}.{hint}")
            return v
        if self.kind == "bool":
            if not isinstance(v, bool):
                raise _fail(f"expected true or false, got {shown(v)}{at}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(f"expected a number, got {shown(v)}{at}")
        if isinstance(v, float) and not math.isfinite(v):
            raise _fail(f"expected a finite number, got {shown(v)}{at}")
        if self.kind == "int":
            if isinstance(v, float) and not v.is_integer():
                raise _fail(f"expected a whole number, got {shown(v)}{at}")
            v = int(v)
        else:
            v = float(v)
        ok = (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )
        if not ok:
            raise _fail(f"expected a value {self.bounds()}, got {shown(v)}{at}")
        return v

    def parse(self, raw: Any) -> Dim:
        if isinstance(raw, (Fixed, Choice, IntRange, FloatRange)):
            return raw
        if isinstance(raw, list):
            return self._choice(raw)
        if isinstance(raw, dict):
            if "choices" in raw:
                extra = set(raw) - {"choices"}
                if extra:
                    raise _fail(f"a choice takes only 'choices', got also {sorted(extra)}")
                if not isinstance(raw["choices"], list):
                    raise _fail(f"'choices' must be a list, got {shown(raw['choices'])}")
                return self._choice(raw["choices"])
            return self._range(raw)
        return Fixed(self.scalar(raw))

    def _choice(self, items: list[Any]) -> Dim:
        if not items:
            raise _fail("an empty choice list has nothing to pick: give at least one value, e.g. [3, 5]")
        values = tuple(self.scalar(v, f"choice {i + 1}") for i, v in enumerate(items))
        if len(set(values)) != len(values):
            raise _fail(f"the choice list {list(values)!r} repeats a value; list each value once")
        return Choice(values)

    def _range(self, raw: dict[str, Any]) -> Dim:
        if self.kind in ("str", "bool"):
            what = f"one of {', '.join(self.options)}" if self.kind == "str" else "true or false"
            raise _fail(f"a range needs numbers; give a value ({what}) or a list of them, e.g. [{self._example()}]")
        allowed = {"low", "high", "log", "step"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            hint = did_you_mean(unknown[0], sorted(allowed | {"choices"}))
            raise _fail(f"unknown key {shown(unknown[0])} in a range: a range takes low, high, log, step.{hint}")
        if "low" not in raw or "high" not in raw:
            raise _fail("a range needs both 'low' and 'high', e.g. {low: 1, high: 4}")
        low, high = self.scalar(raw["low"], "low"), self.scalar(raw["high"], "high")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise _fail(f"'log' must be true or false, got {shown(log)}")
        if low > high:
            raise _fail(f"`low <= high` must hold, but got low={shown(low)} and high={shown(high)}; swap them")
        if log and low <= 0:
            raise _fail(f"a log-scale range needs low > 0, but got low={shown(low)}; use a small positive low such as "
                        "1e-5")
        step = raw.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise _fail(f"'step' must be a positive number, got {shown(step)}")
            if log:
                raise _fail("'step' and 'log: true' cannot be combined; drop one of them")
        if self.kind == "int":
            if step is not None and not float(step).is_integer():
                raise _fail(f"'step' of an integer range must be a whole number, got {shown(step)}")
            return IntRange(int(low), int(high), int(step or 1), log)
        return FloatRange(float(low), float(high), float(step) if step is not None else None, log)

    def _example(self) -> str:
        return ", ".join(self.options[:2]) if self.kind == "str" else "true, false"

    def json_schema(self) -> dict[str, Any]:
        if self.kind == "str":
            scalar: dict[str, Any] = {"type": "string", "enum": list(self.options)}
        elif self.kind == "bool":
            scalar = {"type": "boolean"}
        else:
            scalar = {"type": "integer" if self.kind == "int" else "number"}
            bounds = (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum"), ("lt", "exclusiveMaximum"))
            for key, name in bounds:
                if getattr(self, key) is not None:
                    scalar[name] = getattr(self, key)
        forms: list[dict[str, Any]] = [
            scalar,
            {"type": "array", "items": scalar, "minItems": 1, "description": "choose one of these"},
            {"type": "object", "properties": {"choices": {"type": "array", "items": scalar, "minItems": 1}},
             "required": ["choices"], "additionalProperties": False},
        ]
        if self.kind in ("int", "float"):
            forms.append({
                "type": "object",
                "properties": {"low": scalar, "high": scalar, "log": {"type": "boolean"}, "step": {"type": "number"}},
                "required": ["low", "high"], "additionalProperties": False,
                "description": "a range, inclusive; log: true samples on a log scale",
            })
        return {"anyOf": forms}


@dataclass(frozen=True)
class DimRules(GroupedMetadata):
    """The pydantic metadata of a searchable key: parse the YAML forms by `rule`, write them back, describe them.

    Grouped metadata (like `annotated_types.Interval`): pydantic unpacks it inside `Annotated`.
    """

    rule: _Rule

    def __iter__(self) -> Iterator[object]:
        yield PlainValidator(self.rule.parse)
        yield PlainSerializer(to_yaml_form)
        yield WithJsonSchema(self.rule.json_schema())


def dim(kind: Kind, *, ge: float | None = None, gt: float | None = None, lt: float | None = None,
        le: float | None = None, options: tuple[str, ...] = ()) -> DimRules:
    """The metadata of a searchable spec key with the given value rules: `key: Annotated[Dim, dim(...)]`."""
    return DimRules(_Rule(kind, ge=ge, gt=gt, lt=lt, le=le, options=options))


def default(raw: Any) -> Dim:
    """A searchable key's default, written as in YAML (`= default(3)`).

    The field stores `raw` and `validate_default` parses it into a `Dim` on every instance, so the attribute is
    always a `Dim`; the cast says so to mypy, and the JSON schema still shows the YAML form.
    """
    return cast(Dim, raw)
