"""Read a YAML spec into a `Spec`, turning every problem into a message with file:line, key path and fix."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from nas.errors import SpecError
from nas.spec.dims import did_you_mean, shown
from nas.spec.model import FiltersGrowth, Section, Spec

Loc = tuple[str | int, ...]
_MODEL_NAMES = {Section.__name__, *(cls.__name__ for cls in Section.__subclasses__())}

# Keys that may change between a search and its resume: the budget and how trials are run, never what
# is searched. Dotted prefixes of `flat_keys`.
RESUMABLE_KEYS = ("description", "search.trials", "search.timeout", "search.budget", "search.endgame",
                  "search.trial_timeout",
                  "search.max_failed_trials", "search.isolate_trials", "search.worker_max_trials", "search.workers",
                  "tracking.", "export.", "report")

# Keys added after run dirs existed, left out of the spec's identity while at a default they have had, so that
# a run made before the key existed, or before its default changed, still resumes (its hash, and so its run
# dir, stay the same).
NEUTRAL_DEFAULTS: dict[str, tuple[Any, ...]] = {"data.split_seed": (0,), "train.schedule": ("constant",),
                                                "train.warmup": (None,),
                                                # the default was auto until rung_data: full was measured better
                                                "search.rung_data": ("full", "auto")}


def flat_keys(spec: Spec) -> dict[str, Any]:
    """The spec as {dotted key: value}, without the keys a resume may change."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(spec.model_dump(mode="json"), "")
    return {k: v for k, v in out.items() if not any(k == p or k.startswith(p) for p in RESUMABLE_KEYS)
            and v not in NEUTRAL_DEFAULTS.get(k, ())}


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    path: Path
    text: str
    shown: str = ""  # the path as the user typed it, for messages

    def where(self, dotted: str) -> str:
        """'spec.yaml:12: train.batch_size' for a message about a key, with the key's line when it is in the file."""
        name = self.shown or str(self.path)
        try:
            _, lines = _line_map(self.text, name)
        except SpecError:
            lines = {}
        line = _nearest_line(lines, tuple(dotted.split(".")))
        return f"{name}:{line}: {dotted}" if line else f"{name}: {dotted}"

    @property
    def base_dir(self) -> Path:
        """Relative data paths resolve against the spec's folder, never the cwd."""
        return self.path.parent

    @property
    def hash(self) -> str:
        """Identity of what the search explores (RESUMABLE_KEYS left out)."""
        blob = json.dumps(flat_keys(self.spec), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 as a float (YAML 1.1 wants 1.0e-3; nobody writes that)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _line_map(text: str, path: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely and record the line of every key, so errors can point at it."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        fix = ("YAML indents with spaces only: replace the tab with spaces" if "'\\t'" in problem
               else "Check indentation and quoting on that line")
        raise SpecError(path, [f"{path}{line}: YAML syntax error: {problem}. {fix}."]) from None
    lines: dict[Loc, int] = {}

    seen_nodes: set[int] = set()

    def walk(node: Any, loc: Loc) -> None:
        lines.setdefault(loc, node.start_mark.line + 1)
        if id(node) in seen_nodes:  # an alias: walked once already (and walking again could explode)
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    where = ".".join(str(p) for p in (*loc, key))
                    raise SpecError(path, [f"{path}:{key_node.start_mark.line + 1}: {where}: the key appears twice; "
                                           "keep one"])
                seen.add(key)
                lines[(*loc, key)] = key_node.start_mark.line + 1
                walk(value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return data, lines


def _nearest_line(lines: dict[Loc, int], loc: Loc, root: bool = False) -> int | None:
    """The line of the key at `loc`, else of its closest parent in the file (the top of the file if `root`)."""
    return next((lines[loc[:i]] for i in range(len(loc), -1 if root else 0, -1) if loc[:i] in lines), None)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `loc` (for listing valid keys)."""
    model: Any = Spec
    for key in loc:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if key == "filters":
            model = FiltersGrowth
        if model is None:
            return None
    return model if isinstance(model, type) else None


def _is_branch_tag(part: str | int) -> bool:
    """A union-branch name pydantic puts into an error's location (a model class, "function-plain[parse()]"),
    as opposed to a key the user wrote (which may well start with a capital letter)."""
    return isinstance(part, str) and (part in _MODEL_NAMES
                                      or re.match(r"(function-[a-z]+|literal)\[", part) is not None)


def _message(err: ErrorDetails, path: str, lines: dict[Loc, int]) -> str:
    # drop pydantic's union-branch tags ("FiltersGrowth", "function-plain[parse()]") from the path
    loc: Loc = tuple(p for p in err["loc"] if not _is_branch_tag(p))
    # the closest line we know: the key itself, else its parent
    line = _nearest_line(lines, loc, root=True)
    where = f"{path}:{line}" if line else path
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind, msg = err["type"], err["msg"]
    if loc and loc[-1] == "[key]":  # a mapping whose keys are metric names: the key itself is wrong
        loc, dotted = loc[:-1], ".".join(str(p) for p in loc[:-1])
        expected = err.get("ctx", {}).get("expected", "")
        hint = did_you_mean(err["input"], [o.strip(" '") for o in expected.replace(" or ", ", ").split(",")]) \
            if isinstance(err.get("input"), str) else ""
        return (f"{where}: {dotted}: {shown(err.get('input'))} is not a metric nas measures on every trial; use one "
                f"of {expected}.{hint}")
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        valid = list(owner.model_fields) if owner else []
        hint = did_you_mean(str(loc[-1]), valid)
        return f"{where}: {dotted}: unknown key.{hint} Valid keys here: {', '.join(valid)}."
    if kind == "missing":
        return f"{where}: {dotted}: required key is missing; add it (see `nas schema` or search_spaces/digits.yaml)."
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        options = [o.strip(" '") for o in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(err["input"], options) if isinstance(err.get("input"), str) else ""
        return f"{where}: {dotted}: expected one of {expected}, got {shown(err.get('input'))}.{hint}"
    if kind in ("model_type", "dict_type") or kind.startswith("model_attributes"):
        return f"{where}: {dotted}: expected a mapping of keys (a YAML section), got {shown(err.get('input'))}."
    if kind in _TYPE_WORDS or kind in _BOUNDS:
        return f"{where}: {dotted}: expected {_expected(loc, kind)}, got {shown(err.get('input'))}."
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return (f"{where}: name: expected letters, digits, '_', '.' or '-' (starting with a letter or digit), got "
                f"{shown(err.get('input'))}; the name becomes the folder runs/<name>/ and the MLflow experiment.")
    if kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return (f"{where}: {dotted}: expected {'at least' if kind == 'too_short' else 'at most'} {n} item(s), "
                f"got {ctx.get('actual_length')}: {shown(err.get('input'))}.")
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {dotted}: {msg}."if not msg.endswith((".", "?")) else f"{where}: {dotted}: {msg}"


# pydantic error type -> what the key expected, in the words of the rest of our messages
_TYPE_WORDS = {
    "int_parsing": "a whole number", "int_from_float": "a whole number", "int_type": "a whole number",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string (quote it if YAML reads it as something else)",
    "list_type": "a list, e.g. [a, b]", "tuple_type": "a list, e.g. [28, 28]",
}
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_BOUND_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _expected(loc: Loc, kind: str) -> str:
    """'a whole number >= 1', 'a number > 0 and < 1': the type and every bound of the key, not just the one broken."""
    owner = _model_at(loc[:-1]) if loc and isinstance(loc[-1], str) else None
    field = owner.model_fields.get(str(loc[-1])) if owner else None
    bounds = [f"{_BOUND_SIGNS[name]} {getattr(m, name):g}" for m in (field.metadata if field else [])
              for name in _BOUND_SIGNS if hasattr(m, name)]
    if field is not None and field.annotation is int or kind.startswith("int"):
        word = "a whole number"
    elif kind in _TYPE_WORDS:
        word = _TYPE_WORDS[kind]
    else:
        word = "a number"
    return " ".join([word, " and ".join(bounds)]).strip() if word in ("a whole number", "a number") else word


def _close_keys(loc: Loc) -> list[str]:
    owner = _model_at(loc[:-1])
    return difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1, cutoff=0.5) if owner else []


def _is_losing_union_branch(err: ErrorDetails) -> bool:
    """`filters` is a number form or a {base, growth} mapping: report only the branch the input aimed at."""
    tagged = [p for p in err["loc"] if _is_branch_tag(p)]
    if tagged and err["type"] == "literal_error" and isinstance(err.get("input"), dict):
        return True  # `export.select: {...}` aimed at the mapping form, not at best | knee
    return bool(tagged) and err["type"] == "model_type"


def parse_spec(text: str, path: str = "<spec>") -> Spec:
    data, lines = _line_map(text, path)
    if data is None:
        raise SpecError(path, [f"{path}: the spec is empty; expected a YAML mapping with sections name, data, space, "
                               "... (start from search_spaces/digits.yaml)"])
    if not isinstance(data, dict):
        raise SpecError(path, [f"{path}: expected a YAML mapping with sections name, data, space, ... but the file "
                               f"holds {type(data).__name__}; start from search_spaces/digits.yaml"])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not _is_losing_union_branch(e)]
        # `spaec:` both is unknown and leaves `space` missing: the did-you-mean on the typo says it all
        typos = {(*e["loc"][:-1], m) for e in errors if e["type"] == "extra_forbidden"
                 for m in _close_keys(e["loc"])}
        errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in typos)]
        problems = list(dict.fromkeys(_message(e, path, lines) for e in errors))  # dedupe, keep order
        raise SpecError(path, problems) from None
    problems = _across_sections(spec, path, lines)
    if problems:
        raise SpecError(path, problems)
    return spec


def _across_sections(spec: Spec, path: str, lines: dict[Loc, int]) -> list[str]:
    """Rules between sections, which pydantic's per-section models cannot name a key for."""
    def at(*loc: str | int) -> str:
        line = _nearest_line(lines, loc)
        return f"{path}:{line}" if line else path

    problems = []
    measured = spec.search.measured
    if measured and spec.train.backend != "tensorflow":
        first = sorted(measured)[0]
        key = ("search", "constraints", first) if first in spec.search.constraints else ("search", "objectives")
        problems.append(f"{at(*key)}: {'.'.join(map(str, key))}: {', '.join(sorted(measured))} "
                        f"{'is' if len(measured) == 1 else 'are'} measured on each trial's TFLite artifact, which "
                        f"TensorFlow converts, but train.backend is {spec.train.backend!r}; set `train.backend: "
                        "tensorflow`, or optimize val_accuracy, params and flops")
    rule = spec.export.select
    if not isinstance(rule, str):  # export.select on a metric the search never measures could never match
        recorded = {"val_accuracy", "val_loss", "params", "flops"}
        if measured:
            recorded |= {"latency_ms", "size_kb"} | measured
            recorded |= {"int8_val_accuracy"} if spec.search.measure_on == "int8" else set()
        asked = [("maximize" if rule.maximize else "minimize", rule.metric), *(("where", m) for m in rule.where)]
        for goal, metric in asked:
            if metric not in recorded:
                loc = ("export", "select", goal) if goal != "where" else ("export", "select", "where", metric)
                problems.append(f"{at(*loc)}: {'.'.join(loc)}: {metric} is not measured in this search; add it to "
                                "search.objectives or search.constraints (measured metrics are measured on every "
                                "finished trial then), or select on val_accuracy, val_loss, params or flops")
    return problems


def load_spec(path: str | Path) -> LoadedSpec:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [f"{path}: no such spec file; check the path (shipped examples are in "
                                    "search_spaces/)"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [f"{path}: cannot read the spec ({exc.__class__.__name__}); pass a readable UTF-8 "
                                    "YAML file"]) from None
    return LoadedSpec(spec=parse_spec(text, str(path)), path=p.resolve(), text=text, shown=str(path))
