"""Workflow specs: a multi-agent application's graph of agent steps, as a YAML file.

A spec names *roles* (an agent type: model, system prompt, per-call length distributions,
context limit) and *steps* (a visit of the workflow to one role: how many parallel
instances, how many sequential calls each, the tool gaps, what each prompt is composed of,
and the probabilistic edges to the next step, with bounded loops). ``docs/workflow-specs.md``
documents every field; :mod:`pythia.workflow.generate` turns a spec and a seed into jobs.

Validation happens once, in two layers: the JSON schema
(``pythia/workflow/schemas/spec.schema.json``, draft 2020-12) for structure and types, then
semantic checks (known names, probabilities that sum to 1, bounded loops, reachable steps,
ordered bounds). Every problem is a :class:`~pythia.errors.PythiaInputError` with one
sentence naming the file, the line when known, and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from pythia.errors import PythiaInputError
from pythia.inputs import MAX_FANOUT, MAX_SECONDS, MAX_TOKENS

END = "end"
"""The pseudo-step an edge names to end the job."""

DEFAULT_CONCURRENCY = 8
PROMPT_PARTS = ("system", "context", "outputs", "history", "fresh")
DEFAULT_PROMPT = ("system", "context", "history", "fresh")
PROBABILITY_TOLERANCE = 1e-6

FieldPath = tuple[str | int, ...]  # a field path inside the spec: ("steps", "verify", "next", 0, "to")


# --------------------------------------------------------------------------- distributions


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution of a non-negative quantity (tokens, a count, seconds).

    Attributes:
        kind: ``constant`` (``value``), ``uniform`` (``low``..``high``), ``normal``
            (``mean``, ``std``) or ``lognormal`` (``median``, ``sigma``: the median and the
            standard deviation of the logarithm).
        min: lower clamp applied to every draw, if any.
        max: upper clamp applied to every draw, if any.
        cap: the largest value the quantity may take in the simulator (``pythia.inputs``
            limits), applied after ``max``; a heavy tail cannot draw past it.
    """

    kind: str
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    median: float = 1.0
    sigma: float = 0.0
    min: float | None = None
    max: float | None = None
    cap: float | None = field(default=None, compare=False)

    @staticmethod
    def constant(value: float) -> Dist:
        """A distribution that always gives ``value``."""
        return Dist("constant", value=float(value))

    def _draw(self, rng: np.random.Generator) -> float:
        if self.kind == "constant":
            return self.value
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "normal":
            return float(rng.normal(self.mean, self.std))
        # min(..., 700): exp overflows a float past about 709; the cap clamps the draw anyway.
        return self.median * math.exp(min(self.sigma * float(rng.standard_normal()), 700.0))

    def sample(self, rng: np.random.Generator) -> float:
        """One real draw, clamped to ``[min, max]`` and to ``>= 0``."""
        x = self._draw(rng)
        if self.min is not None:
            x = max(x, self.min)
        if self.max is not None:
            x = min(x, self.max)
        if self.cap is not None:
            x = min(x, self.cap)
        return max(x, 0.0)

    def int_bounds(self, floor: int) -> tuple[int, int | None]:
        """The integer clamps ``[lo, hi]`` of :meth:`sample_int` (``hi`` ``None``: unbounded)."""
        lo = floor if self.min is None else max(floor, math.ceil(self.min))
        hi = None if self.max is None else math.floor(self.max)
        return lo, hi

    def sample_int(self, rng: np.random.Generator, floor: int = 0) -> int:
        """One integer draw of at least ``floor``.

        ``uniform`` draws an integer uniformly from ``ceil(low)..floor(high)`` (so ``low: 3,
        high: 4`` gives 3 or 4 with equal odds); the other kinds round the real draw to the
        nearest integer. The result is then clamped to the integers in ``[min, max]``.
        """
        if self.kind == "uniform":
            x = int(rng.integers(math.ceil(self.low), math.floor(self.high) + 1))
        else:
            x = int(math.floor(self._draw(rng) + 0.5))
        lo, hi = self.int_bounds(floor)
        if hi is not None:
            x = min(x, hi)
        if self.cap is not None:
            x = min(x, int(self.cap))
        return max(x, lo)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True, slots=True)
class Role:
    """An agent type of the workflow (see ``docs/workflow-specs.md``, *roles*)."""

    name: str
    model: str
    system_tokens: int
    fresh_tokens: Dist
    output_tokens: Dist
    max_input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PromptPart:
    """One part of a prompt: ``system``, ``context``, ``outputs`` (of ``roles``), ``history``, ``fresh``."""

    kind: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Edge:
    """An edge to ``to`` (a step or :data:`END`), taken with probability ``p``.

    ``max_traversals``: how often the edge may be taken in one job (``None``: unbounded).
    """

    to: str
    p: float
    max_traversals: int | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One node of the workflow graph (see ``docs/workflow-specs.md``, *steps*)."""

    name: str
    role: str
    parallel: Dist
    calls: Dist
    gap_before: Dist
    gap_between: Dist
    prompt: tuple[PromptPart, ...]
    fresh_tokens: Dist
    output_tokens: Dist
    final_output_tokens: Dist | None
    next: tuple[Edge, ...]

    def has(self, kind: str) -> bool:
        """True when the step's prompt includes the part ``kind``."""
        return any(p.kind == kind for p in self.prompt)

    @property
    def output_roles(self) -> tuple[str, ...]:
        """The roles whose latest outputs the step's prompts include, in prompt order."""
        return tuple(r for p in self.prompt if p.kind == "outputs" for r in p.roles)


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """A validated workflow spec.

    Attributes:
        name: the workflow type.
        roles: the roles by name, in file order.
        steps: the steps by name, in file order.
        start: the first step of every job.
        context_tokens: length of the per-job context.
        concurrency: default closed-loop concurrency of generated traces.
        source: the file the spec came from (for messages).
        sha256: hash of the file's bytes (of the canonical JSON for in-memory specs).
        description: free text.
    """

    name: str
    roles: Mapping[str, Role]
    steps: Mapping[str, Step]
    start: str
    context_tokens: Dist
    concurrency: int = DEFAULT_CONCURRENCY
    source: str = "<spec>"
    sha256: str = ""
    description: str = ""


# --------------------------------------------------------------------------- error locations


def format_path(path: Iterable[str | int]) -> str:
    """A field path as ``steps.verify.next[0].to``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _line_of(node: yaml.Node | None, path: FieldPath) -> int | None:
    """The 1-based line of the YAML node at ``path`` (the deepest node found on the way)."""
    line = None if node is None else node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


class _Checker:
    """Builds error messages that name the file, the line (when known) and the field."""

    def __init__(self, source: str, root: yaml.Node | None) -> None:
        self.source = source
        self.root = root

    def error(self, path: FieldPath, message: str) -> PythiaInputError:
        line = _line_of(self.root, path) if path else None
        where = self.source if line is None else f"{self.source}:{line}"
        if not path:  # the document as a whole
            return PythiaInputError(f"{where}: {message}")
        return PythiaInputError(f"{where}: {format_path(path)}: {message}")


# --------------------------------------------------------------------------- layer 1: schema


@lru_cache(maxsize=1)
def _schema_validator():  # type: ignore[no-untyped-def]
    import jsonschema

    text = resources.files("pythia.workflow").joinpath("schemas/spec.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def _check_plain(obj: Any, path: FieldPath, chk: _Checker) -> None:
    """YAML allows what JSON does not: non-string keys (``1:``, ``yes:``) and ``.inf``/``.nan``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise chk.error(path, f"key {k!r} must be a name (a string)")
            _check_plain(v, (*path, k), chk)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_plain(v, (*path, i), chk)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise chk.error(path, f"{obj} is not a finite number")


def _check_schema(raw: Any, chk: _Checker) -> None:
    import jsonschema

    if raw is None:
        raise chk.error((), "the workflow spec is empty; it needs name, roles and steps")
    if not isinstance(raw, dict):
        raise chk.error((), f"a workflow spec is a mapping with name, roles and steps, not a {type(raw).__name__}")
    _check_plain(raw, (), chk)
    errors = list(_schema_validator().iter_errors(raw))
    if errors:
        # A misspelt key also makes a required one go missing; naming the misspelling helps more.
        unexpected = [e for e in errors if e.validator == "additionalProperties"]
        e = jsonschema.exceptions.best_match(unexpected or errors)
        from pythia.inputs import schema_hint

        raise chk.error(tuple(e.absolute_path), schema_hint(e) or e.message)


# --------------------------------------------------------------------------- layer 2: semantics

_QUANTITY = {
    "tokens": ("a length", 0),
    "output": ("an output length", 1),
    "count": ("a count", 1),
    "seconds": ("a duration", 0),
}
# The largest value of each quantity (pythia.inputs); parameters above it are refused.
_CAP = {"tokens": MAX_TOKENS, "output": MAX_TOKENS, "count": MAX_FANOUT, "seconds": MAX_SECONDS}
MAX_SIGMA = 10.0
"""Largest lognormal sigma (a factor of e^10 per standard deviation is already absurd)."""


def _dist(raw: Any, path: FieldPath, quantity: str, chk: _Checker) -> Dist:
    """Build a :class:`Dist` and check it can give a valid ``quantity``."""
    what, floor = _QUANTITY[quantity]
    cap = _CAP[quantity]
    integer = quantity != "seconds"
    bare = not isinstance(raw, dict)
    if bare:
        raw = {"dist": "constant", "value": raw}

    def at(name: str) -> FieldPath:
        return path if bare else (*path, name)  # a bare number is the field itself
    d = Dist(
        kind=raw["dist"],
        **{k: float(v) for k, v in raw.items() if k not in ("dist", "min", "max")},
        min=None if raw.get("min") is None else float(raw["min"]),
        max=None if raw.get("max") is None else float(raw["max"]),
        cap=float(cap),
    )
    for name in ("value", "low", "high", "mean", "min", "max"):
        v = raw.get(name)
        if v is not None and v < 0:
            raise chk.error(at(name), f"{what} cannot be negative ({v})")
    for name in ("value", "low", "high", "mean", "min", "median", "std"):
        v = raw.get(name)
        if v is not None and v > cap:
            raise chk.error(at(name), f"{v} is above the largest {what} the simulator represents ({cap:,g})")
    if raw.get("sigma") is not None and raw["sigma"] > MAX_SIGMA:
        raise chk.error(at("sigma"), f"sigma {raw['sigma']} is above {MAX_SIGMA:g}; a lognormal that wide has no useful median")
    if d.min is not None and d.max is not None and d.min > d.max:
        raise chk.error(at("min"), f"min {raw['min']} is above max {raw['max']}")
    if d.kind == "uniform" and d.low > d.high:
        raise chk.error(at("low"), f"low {raw['low']} is above high {raw['high']}")
    if integer:
        if d.kind == "uniform" and math.ceil(d.low) > math.floor(d.high):
            raise chk.error(at("low"), f"no integer lies between low {raw['low']} and high {raw['high']}")
        if d.max is not None and math.floor(d.max) < floor:
            raise chk.error(at("max"), f"{what} must allow at least {floor}, but max is {raw['max']}")
        if d.kind == "constant" and d.value < floor - 0.5:
            raise chk.error(at("value"), f"{what} must be at least {floor} ({raw['value']})")
        if d.kind == "uniform" and math.floor(d.high) < floor:
            raise chk.error(at("high"), f"{what} must allow at least {floor}, but high is {raw['high']}")
        lo, hi = d.int_bounds(floor)
        if hi is not None and lo > hi:
            raise chk.error(at("min"), "no integer lies between the clamps min and max")
    return d


def _role(name: str, raw: dict[str, Any], chk: _Checker) -> Role:
    path: FieldPath = ("roles", name)
    zero = Dist.constant(0)
    role = Role(
        name=name,
        model=raw["model"],
        system_tokens=int(raw.get("system_tokens", 0)),
        fresh_tokens=(
            _dist(raw["fresh_tokens"], (*path, "fresh_tokens"), "tokens", chk) if "fresh_tokens" in raw else zero
        ),
        output_tokens=_dist(raw["output_tokens"], (*path, "output_tokens"), "output", chk),
        max_input_tokens=raw.get("max_input_tokens"),
    )
    if role.max_input_tokens is not None and role.system_tokens > role.max_input_tokens:
        raise chk.error(
            (*path, "system_tokens"),
            f"the system prompt ({role.system_tokens} tokens) does not fit max_input_tokens ({role.max_input_tokens})",
        )
    return role


def _prompt(raw: list[Any] | None, path: FieldPath, roles: Mapping[str, Role], chk: _Checker) -> tuple[PromptPart, ...]:
    if raw is None:
        return tuple(PromptPart(k) for k in DEFAULT_PROMPT)
    parts: list[PromptPart] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            part = PromptPart(item)
        else:
            for j, r in enumerate(item["outputs"]):
                if r not in roles:
                    raise chk.error((*path, i, "outputs", j), f"unknown role {r!r}; known: {', '.join(roles)}")
            part = PromptPart("outputs", tuple(dict.fromkeys(item["outputs"])))
        if parts and PROMPT_PARTS.index(part.kind) <= PROMPT_PARTS.index(parts[-1].kind):
            raise chk.error(
                (*path, i),
                f"{part.kind!r} is out of order or repeated; parts go in the order {', '.join(PROMPT_PARTS)}",
            )
        parts.append(part)
    return tuple(parts)


def _edges(raw: list[dict[str, Any]], path: FieldPath, steps: Iterable[str], chk: _Checker) -> tuple[Edge, ...]:
    known = list(steps)
    edges: list[Edge] = []
    for i, e in enumerate(raw):
        if e["to"] != END and e["to"] not in known:
            raise chk.error((*path, i, "to"), f"unknown step {e['to']!r}; known: {', '.join([*known, END])}")
        if "p" not in e and len(raw) > 1:
            raise chk.error((*path, i), "an edge of a branch (several edges) needs a probability p")
        edges.append(Edge(to=e["to"], p=float(e.get("p", 1.0)), max_traversals=e.get("max_traversals")))
    total = sum(e.p for e in edges)
    if edges and abs(total - 1.0) > PROBABILITY_TOLERANCE:
        raise chk.error(path, f"the probabilities p of the edges sum to {total:g}, not 1")
    return tuple(edges)


def _step(name: str, raw: dict[str, Any], spec_raw: dict[str, Any], roles: Mapping[str, Role], chk: _Checker) -> Step:
    path: FieldPath = ("steps", name)
    if name == END:
        raise chk.error(path, f"{END!r} is reserved for the end of the job; rename the step")
    if raw["role"] not in roles:
        raise chk.error((*path, "role"), f"unknown role {raw['role']!r}; known: {', '.join(roles)}")
    role = roles[raw["role"]]
    one, zero = Dist.constant(1), Dist.constant(0)

    def opt(field: str, quantity: str, default: Dist) -> Dist:
        return _dist(raw[field], (*path, field), quantity, chk) if field in raw else default

    return Step(
        name=name,
        role=role.name,
        parallel=opt("parallel", "count", one),
        calls=opt("calls", "count", one),
        gap_before=opt("gap_before", "seconds", zero),
        gap_between=opt("gap_between", "seconds", zero),
        prompt=_prompt(raw.get("prompt"), (*path, "prompt"), roles, chk),
        fresh_tokens=opt("fresh_tokens", "tokens", role.fresh_tokens),
        output_tokens=opt("output_tokens", "output", role.output_tokens),
        final_output_tokens=(
            _dist(raw["final_output_tokens"], (*path, "final_output_tokens"), "output", chk)
            if "final_output_tokens" in raw
            else None
        ),
        next=_edges(raw.get("next", []), (*path, "next"), spec_raw["steps"], chk),
    )


def _check_graph(steps: Mapping[str, Step], start: str, chk: _Checker) -> None:
    """Every step reachable from ``start``; every loop crosses an edge with ``max_traversals``."""
    seen = {start}
    stack = [start]
    while stack:
        for e in steps[stack.pop()].next:
            if e.to != END and e.to not in seen:
                seen.add(e.to)
                stack.append(e.to)
    for name in steps:
        if name not in seen:
            raise chk.error(("steps", name), f"the step is unreachable from the start step {start!r}")
    # Depth-first search over the unbounded edges only: a back edge closes an unbounded loop.
    state: dict[str, int] = {}  # 1 on the DFS path, 2 done
    trail: list[str] = []

    def visit(u: str) -> None:
        state[u] = 1
        trail.append(u)
        for i, e in enumerate(steps[u].next):
            if e.to == END or e.max_traversals is not None:
                continue
            if state.get(e.to) == 1:
                loop = " -> ".join([*trail[trail.index(e.to):], e.to])
                raise chk.error(
                    ("steps", u, "next", i),
                    f"the edge to {e.to!r} closes a loop ({loop}) without a bound; give it max_traversals",
                )
            if e.to not in state:
                visit(e.to)
        trail.pop()
        state[u] = 2

    for name in steps:  # every step is reachable, so this starts at start and finds all loops
        if name not in state:
            visit(name)


def parse_spec(
    raw: Any, source: str = "<spec>", *, sha256: str | None = None, node: yaml.Node | None = None
) -> WorkflowSpec:
    """Validate a spec given as parsed YAML/JSON and build the :class:`WorkflowSpec`.

    Args:
        raw: the parsed document.
        source: the name used in error messages (the file path).
        sha256: the hash recorded in generated traces; by default the hash of ``raw`` as
            canonical JSON.
        node: the composed YAML node tree, used to put line numbers in messages.
    """
    chk = _Checker(source, node)
    _check_schema(raw, chk)
    roles = {name: _role(name, r, chk) for name, r in raw["roles"].items()}
    steps = {name: _step(name, s, raw, roles, chk) for name, s in raw["steps"].items()}
    start = raw.get("start", next(iter(steps)))
    if start not in steps:
        raise chk.error(("start",), f"unknown step {start!r}; known: {', '.join(steps)}")
    _check_graph(steps, start, chk)
    if sha256 is None:
        sha256 = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return WorkflowSpec(
        name=raw["name"],
        roles=roles,
        steps=steps,
        start=start,
        context_tokens=_dist(raw["context_tokens"], ("context_tokens",), "tokens", chk)
        if "context_tokens" in raw
        else Dist.constant(0),
        concurrency=raw.get("concurrency", DEFAULT_CONCURRENCY),
        source=source,
        sha256=sha256,
        description=raw.get("description", ""),
    )


def load_spec(path: str | Path) -> WorkflowSpec:
    """Read, validate and build the workflow spec in the YAML file ``path``."""
    from pythia import inputs

    path = Path(path)
    data = inputs.read_bytes(path, "workflow spec")
    doc = inputs.parse_yaml(inputs.decode_text(data, str(path), "workflow spec"), str(path))
    raw, node = doc.value, doc.node
    return parse_spec(raw, str(path), sha256=hashlib.sha256(data).hexdigest(), node=node)
