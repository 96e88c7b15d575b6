"""The call annotation: three IDs (and optional fields) sent with every LLM call.

Wire form. In an OpenAI-compatible request the annotation travels in ``extra_body`` under
``vllm_xargs``, which vLLM's OpenAI server copies into ``SamplingParams.extra_args`` of the
engine request, where a scheduler plugin can read it::

    client.chat.completions.create(
        model=..., messages=...,
        extra_body={"vllm_xargs": {"pythia.workflow_type": "coding-assistant",
                                   "pythia.workflow_id": "job-17",
                                   "pythia.agent_role": "engineer",
                                   "pythia.parent_call_id": "job-17/3",
                                   "pythia.step": 4}})

``vllm_xargs`` takes flat scalar values only, hence the ``pythia.`` key prefix instead of a
nested object. A gateway may also accept a nested ``{"pythia": {...}}`` object;
:func:`parse_request_body` understands both. :func:`with_annotation` merges the annotation into
a caller's own ``extra_body``.

Clients and routers that cannot set a body field send the same fields as HTTP headers
(``X-Pythia-Workflow-Type``, ``X-Pythia-Workflow-Id``, ``X-Pythia-Agent-Role``,
``X-Pythia-Agent-Id``, ``X-Pythia-Parent-Agent-Id``, ``X-Pythia-Parent-Call-Id``,
``X-Pythia-Step``; :data:`HEADERS`); the server-side middleware
:class:`pythia.serve.headers.PythiaHeaders` copies them into ``vllm_xargs``. A field in the
body wins over the same field in a header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from pythia.errors import PythiaInputError
from pythia.inputs import MAX_CALLS_PER_JOB

PREFIX = "pythia."
REQUIRED = ("workflow_type", "workflow_id", "agent_role")
OPTIONAL = ("parent_call_id", "step", "agent_id", "parent_agent_id")
# The HTTP header of each field (header names are case-insensitive).
HEADERS = {name: "x-pythia-" + name.replace("_", "-") for name in (*REQUIRED, *OPTIONAL)}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")
_MAX_ID = 256


@dataclass(frozen=True, slots=True)
class CallAnnotation:
    """What a multi-agent application tells the serving layer about one call.

    Attributes:
        workflow_type: the application's workflow (``coding-assistant``); predictions are
            learned per type.
        workflow_id: one run of the workflow (a job, a session); calls with equal ids share
            context and are one job for scheduling.
        agent_role: the role making the call (``planner``, ``engineer``).
        parent_call_id: the call whose result led to this one, if known.
        step: the position of the call within its job (0-based), if known.
        agent_id: one instance among parallel agents of a role (``engineer/2``); calls with
            equal ids continue one conversation. ``None``: the role is the instance.
        parent_agent_id: the agent instance that started this one (a sub-agent's parent).
    """

    workflow_type: str
    workflow_id: str
    agent_role: str
    parent_call_id: str | None = None
    step: int | None = None
    agent_id: str | None = None
    parent_agent_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("workflow_type", "agent_role"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.match(value):
                raise PythiaInputError(
                    f"annotation field {name}={value!r} must be 1-128 characters of letters, "
                    "digits and _.:/@+- starting with a letter or digit"
                )
        if not isinstance(self.workflow_id, str) or not 0 < len(self.workflow_id) <= _MAX_ID:
            raise PythiaInputError(
                f"annotation field workflow_id={self.workflow_id!r} must be a non-empty string "
                f"of at most {_MAX_ID} characters"
            )
        for name in ("parent_call_id", "agent_id", "parent_agent_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= _MAX_ID):
                raise PythiaInputError(
                    f"annotation field {name}={value!r} must be a non-empty string of at most {_MAX_ID} characters"
                )
        if self.step is not None and (
            isinstance(self.step, bool) or not isinstance(self.step, int) or not 0 <= self.step <= MAX_CALLS_PER_JOB
        ):
            raise PythiaInputError(
                f"annotation field step={self.step!r} must be an integer from 0 to {MAX_CALLS_PER_JOB}"
            )

    def to_extra_args(self) -> dict[str, str | int]:
        """The flat ``pythia.*`` mapping carried in ``vllm_xargs`` / ``SamplingParams.extra_args``."""
        out: dict[str, str | int] = {
            PREFIX + "workflow_type": self.workflow_type,
            PREFIX + "workflow_id": self.workflow_id,
            PREFIX + "agent_role": self.agent_role,
        }
        for name in OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[PREFIX + name] = value
        return out

    def to_extra_body(self) -> dict[str, Any]:
        """The ``extra_body`` of an OpenAI-client request that carries this annotation."""
        return {"vllm_xargs": self.to_extra_args()}

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None) -> "CallAnnotation | None":
        """Parse the flat form; ``None`` when the request carries no annotation at all.

        Raises :class:`PythiaInputError` when an annotation is present but malformed; hosts
        that must never fail (the vLLM plugin) catch it, serve the call unannotated and count it.
        """
        if not extra_args:
            return None
        fields = {k[len(PREFIX):]: v for k, v in extra_args.items() if k.startswith(PREFIX)}
        if not fields:
            return None
        return cls._from_fields(fields)

    @classmethod
    def _from_fields(cls, fields: Mapping[str, Any]) -> "CallAnnotation":
        known = {*REQUIRED, *OPTIONAL}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise PythiaInputError(
                f"annotation has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("workflow_type", "workflow_id", "agent_role") if k not in fields]
        if missing:
            raise PythiaInputError(f"annotation is missing required field(s) {', '.join(missing)}")
        step = fields.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)  # JSON clients may send 3.0
        return cls(
            workflow_type=fields["workflow_type"],
            workflow_id=fields["workflow_id"],
            agent_role=fields["agent_role"],
            parent_call_id=fields.get("parent_call_id"),
            step=step,
            agent_id=fields.get("agent_id"),
            parent_agent_id=fields.get("parent_agent_id"),
        )


def parse_request_body(body: Mapping[str, Any]) -> CallAnnotation | None:
    """The annotation of an OpenAI-compatible request body, from ``vllm_xargs`` or ``pythia``."""
    nested = body.get("pythia")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise PythiaInputError("request field pythia must be an object")
        return CallAnnotation._from_fields(nested)
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, Mapping):
        raise PythiaInputError("request field vllm_xargs must be an object")
    return CallAnnotation.from_extra_args(xargs)


def with_annotation(extra_body: Mapping[str, Any] | None = None, *, workflow_type: str, workflow_id: str,
                    agent_role: str, **optional: Any) -> dict[str, Any]:
    """A copy of a caller's ``extra_body`` with the annotation merged into its ``vllm_xargs``.

    ``optional``: ``agent_id``, ``parent_agent_id``, ``parent_call_id``, ``step``. The caller's
    other ``vllm_xargs`` keys are kept; its ``pythia.*`` keys are replaced. Raises
    :class:`PythiaInputError` on a malformed field, before anything is sent.
    """
    unknown = sorted(set(optional) - set(OPTIONAL))
    if unknown:
        raise PythiaInputError(f"annotation has unknown field(s) {', '.join(unknown)}; known: {', '.join(OPTIONAL)}")
    ann = CallAnnotation(workflow_type, workflow_id, agent_role, **optional)
    body = dict(extra_body or {})
    xargs = body.get("vllm_xargs") or {}
    if not isinstance(xargs, Mapping):
        raise PythiaInputError("extra_body field vllm_xargs must be an object")
    body["vllm_xargs"] = {**{k: v for k, v in xargs.items() if not k.startswith(PREFIX)}, **ann.to_extra_args()}
    return body


def headers_to_extra_args(headers: Mapping[str, str]) -> dict[str, str | int]:
    """The ``pythia.*`` extra args that ``X-Pythia-*`` headers carry (unvalidated, as sent).

    ``X-Pythia-Step`` becomes an integer when it is one, else stays text (then the plugin
    counts the annotation as malformed, as it would the same value in the body).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    out: dict[str, str | int] = {}
    for name, header in HEADERS.items():
        value = lower.get(header)
        if value is None:
            continue
        value = value.strip()
        if name == "step" and value.isdigit() and len(value) <= 9:
            out[PREFIX + name] = int(value)
        else:
            out[PREFIX + name] = value
    return out
