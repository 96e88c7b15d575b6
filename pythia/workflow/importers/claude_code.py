"""Claude Code session traces (callanjfox/kv-cache-tester, ``traces/``).

One JSON file per session: ``block_size`` (64), ``hash_id_scope`` ("local": ids are unique
within the file only), ``tool_tokens``, ``system_tokens`` and ``requests``. An ordinary request
(``type`` "n" or "s") has ``t`` (issue time, s from the session start), ``model``, ``in``,
``out``, ``hash_ids`` (one id per full block of the prompt; the last ``in mod block_size``
tokens are a partial tail no id covers), ``think_time`` (the gap before it) and ``api_time``
(its serving time, sometimes missing). A ``type: "subagent"`` entry is a nested agent with its
own ``agent_id``, ``subagent_type``, ``requests`` (``t`` relative to the sub-agent's start),
``tool_tokens``, ``system_tokens``, ``duration_ms`` and ``status``; its own ``t`` is its
completion time in session seconds. Consecutive sub-agent entries are one parallel fan-out that
the parent's next request joins. A sub-agent launched in the background (``status``
"async_launched") has null ``duration_ms``, ``total_tokens`` and ``tool_use_count``: the
parent did not wait for it, so nothing joins it.

Each file becomes one job (see ``docs/importers.md`` for the full mapping):

- the main agent's calls form a chain; a fan-out's sub-agents each start from the parent call
  before the group and the parent's next call waits for the last call of every sub-agent
  except background ones, which only fan out (the job still ends when their calls end);
- gaps are the recorded ``think_time`` (it agrees with ``t`` minus the previous call's end to
  within the one-second rounding of ``t``, and it exists where ``api_time`` is missing), except
  around a fan-out, where ``think_time`` spans the whole group and the gap is measured from
  the recorded times instead; every gap is capped at ``LoadOptions.max_gap_s``;
- prompt blocks are keyed by the file-scoped ids, except the leading blocks that hold an
  agent's tool definitions and system prompt, which are re-keyed to streams shared by all
  sessions so that sessions with equal tool lists share them in a prefix cache;
- when the next request of the same agent continues this one, the call's output (and its
  partial tail) are the tokens that request shows at those positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pythia import inputs
from pythia.workflow.hashing import mix, mix_array, stable_key
from pythia.workflow.importers import (
    data_suffix,
    fail,
    need_ids,
    need_int,
    need_list,
    need_number,
    need_object,
    need_str,
    opt_number,
    read_head,
)
from pythia.workflow.trace import Call, Job, Trace, segments

if TYPE_CHECKING:
    from pythia.workflow.load import LoadOptions

WORKFLOW_TYPE = "claude-code"
TOOLS_KEY = stable_key(WORKFLOW_TYPE, "tools")
SYSTEM_KEY = stable_key(WORKFLOW_TYPE, "system")
ORDINARY_TYPES = ("n", "s")
SUBAGENT_TYPE = "subagent"
COMPLETED = "completed"  # a foreground sub-agent: the parent waited for its result
BACKGROUND = "async_launched"  # launched in the background: the parent went on at once
STATUSES = (COMPLETED, BACKGROUND)
_EMPTY = segments([])


@dataclass(slots=True)
class _Request:
    field: str
    t: float
    model: str
    n_in: int
    n_out: int
    ids: np.ndarray
    think: float | None
    api: float | None


@dataclass(slots=True)
class _SubAgent:
    field: str
    agent_id: str
    role: str
    background: bool  # launched in the background: fans out, never joined
    done: float | None  # completion time, session seconds (None in the background)
    start: float | None  # done - duration, session seconds (None in the background)
    tool_tokens: int | None
    system_tokens: int | None
    requests: list[_Request]


@dataclass(slots=True)
class _Session:
    block: int
    tool_tokens: int
    system_tokens: int
    entries: list[_Request | _SubAgent]


@dataclass(slots=True)
class _Agent:
    """One conversation (the main agent or one sub-agent) and the calls it made."""

    agent_id: str
    tool_tokens: int | None
    system_tokens: int | None
    requests: list[_Request] = field(default_factory=list)
    call_ids: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def _request(obj: Any, where: str, f: str, block: int) -> _Request:
    obj = need_object(obj, where, f)
    n_in = need_int(obj, "in", where, f"{f}.in")
    ids = need_ids(obj, "hash_ids", where, f"{f}.hash_ids")
    if len(ids) * block > n_in:
        fail(where, f"field {f}.hash_ids has {len(ids)} blocks of {block} tokens, more than in={n_in}")
    return _Request(
        field=f,
        t=need_number(obj, "t", where, f"{f}.t"),
        model=need_str(obj, "model", where, f"{f}.model"),
        n_in=n_in,
        n_out=need_int(obj, "out", where, f"{f}.out"),
        ids=ids,
        think=opt_number(obj, "think_time", where, f"{f}.think_time"),
        api=opt_number(obj, "api_time", where, f"{f}.api_time"),
    )


def _optional_int(obj: dict[str, Any], key: str, where: str, f: str) -> int | None:
    return None if obj.get(key) is None else need_int(obj, key, where, f)


def _status(obj: dict[str, Any], where: str, f: str) -> str:
    """A sub-agent's ``status`` (absent means "completed", as in older sessions)."""
    status = obj.get("status", COMPLETED)
    if status not in STATUSES:
        fail(where, f"field {f}.status is {status!r}; expected one of {', '.join(STATUSES)}")
    return status


def _entry(obj: Any, where: str, f: str, block: int) -> _Request | _SubAgent:
    obj = need_object(obj, where, f)
    kind = need_str(obj, "type", where, f"{f}.type")
    if kind in ORDINARY_TYPES:
        return _request(obj, where, f, block)
    if kind != SUBAGENT_TYPE:
        fail(where, f"field {f}.type is {kind!r}; expected one of n, s, subagent")
    background = _status(obj, where, f) == BACKGROUND
    t = need_number(obj, "t", where, f"{f}.t")
    done: float | None
    start: float | None
    if background:
        # The parent saw only the launch, so the totals are null; check any that are given,
        # but time the sub-agent by its own requests.
        opt_number(obj, "duration_ms", where, f"{f}.duration_ms")
        _optional_int(obj, "total_tokens", where, f"{f}.total_tokens")
        _optional_int(obj, "tool_use_count", where, f"{f}.tool_use_count")
        done = start = None
    else:
        done = t
        start = t - need_number(obj, "duration_ms", where, f"{f}.duration_ms") / 1000.0
    reqs: list[_Request] = []
    for j, r in enumerate(need_list(obj, "requests", where, f"{f}.requests")):
        g = f"{f}.requests[{j}]"
        if need_str(need_object(r, where, g), "type", where, f"{g}.type") not in ORDINARY_TYPES:
            fail(where, f"field {g}.type must be n or s (sub-agents inside sub-agents are not supported)")
        reqs.append(_request(r, where, g, block))
    return _SubAgent(
        field=f,
        agent_id=need_str(obj, "agent_id", where, f"{f}.agent_id"),
        role=need_str(obj, "subagent_type", where, f"{f}.subagent_type").lower(),
        background=background,
        done=done,
        start=start,
        tool_tokens=_optional_int(obj, "tool_tokens", where, f"{f}.tool_tokens"),
        system_tokens=_optional_int(obj, "system_tokens", where, f"{f}.system_tokens"),
        requests=reqs,
    )


def parse_session(path: Path) -> _Session:
    """Read and check one session file; raise :class:`PythiaInputError` naming the bad field."""
    where = str(path)
    doc = inputs.load_json(path, "Claude Code session")
    if not isinstance(doc, dict):
        fail(where, "the file must hold one JSON object (a session)")
    block = need_int(doc, "block_size", where)
    if block == 0:
        fail(where, "field block_size must be positive")
    scope = doc.get("hash_id_scope", "local")
    if scope != "local":
        fail(where, f"field hash_id_scope is {scope!r}; only 'local' (ids unique within one file) is supported")
    entries = [_entry(r, where, f"requests[{i}]", block) for i, r in enumerate(need_list(doc, "requests", where))]
    if not any(isinstance(e, _Request) or e.requests for e in entries):
        fail(where, "field requests holds no request")
    _check_order([e for e in entries if isinstance(e, _Request)], where)
    for e in entries:
        if isinstance(e, _SubAgent):
            _check_order(e.requests, where)
    return _Session(
        block=block,
        tool_tokens=need_int(doc, "tool_tokens", where),
        system_tokens=need_int(doc, "system_tokens", where),
        entries=entries,
    )


def _check_order(requests: list[_Request], where: str) -> None:
    """One agent's requests are recorded in time order; a step back is an error.

    Sub-agent entries are left out: parallel sub-agents are listed in launch order and
    return in any order.
    """
    for prev, cur in zip(requests, requests[1:]):
        if cur.t < prev.t:
            fail(
                where,
                f"field {cur.field}.t is {cur.t:g}, earlier than {prev.field}.t ({prev.t:g}); "
                "an agent's requests must be in time order",
            )


# --------------------------------------------------------------------------- structure


def _chain_gap(req: _Request, prev: _Request) -> float:
    """The gap between ``prev``'s end and ``req``'s issue within one agent's chain."""
    if req.think is not None:
        return req.think
    if prev.api is not None:
        return req.t - (prev.t + prev.api)
    return req.t - prev.t  # serving time unknown: an upper bound


def _first_link(
    sa: _SubAgent, req: _Request, spawn: int | None, spawn_req: _Request | None
) -> tuple[tuple[int, ...], float]:
    """The deps and gap of a sub-agent's first call, which starts from the spawning call."""
    deps: tuple[int, ...] = () if spawn is None else (spawn,)
    if sa.background or sa.start is None:
        # No duration places its start: it starts as the launching call returns (the job
        # start when there is none), and its requests' t count from there.
        return deps, req.t
    issue = sa.start + req.t
    if spawn is None or spawn_req is None:
        return (), issue  # a fan-out before any parent call: from the session start
    if spawn_req.api is None:
        return deps, 0.0  # the spawning call's end is unknown; sub-agents start as it returns
    return deps, issue - (spawn_req.t + spawn_req.api)


class _Builder:
    """Lays out a session's calls (ids, deps, gaps, roles) in issue order of a sequential run."""

    def __init__(self, session: _Session, max_gap_s: float | None) -> None:
        self.cap = max_gap_s
        self.calls: list[Call] = []
        self.main = _Agent("main", session.tool_tokens, session.system_tokens)
        self.agents: list[_Agent] = [self.main]
        prev: int | None = None
        prev_req: _Request | None = None
        group: list[_SubAgent] = []
        for entry in session.entries:
            if isinstance(entry, _SubAgent):
                group.append(entry)
                continue
            joins, join_end = self._fan_out(group, prev, prev_req)
            group = []
            deps: tuple[int, ...]
            if joins:
                deps, gap = tuple(joins), entry.t - join_end
            elif prev is None or prev_req is None:
                deps, gap = (), entry.t  # from the session start
            else:
                deps, gap = (prev,), _chain_gap(entry, prev_req)
            prev = self._add(entry, "main", self.main, deps, gap, None)
            prev_req = entry
        self._fan_out(group, prev, prev_req)  # a trailing fan-out ends the job

    def _add(self, req: _Request, role: str, agent: _Agent, deps: tuple[int, ...], gap: float, parent: int | None) -> int:
        cid = len(self.calls)
        gap = max(0.0, gap)
        if self.cap is not None:
            gap = min(gap, self.cap)  # a person's idle time is not serving time
        self.calls.append(
            Call(
                call_id=cid,
                agent_role=role,
                agent_id=agent.agent_id,
                model=req.model,
                input_tokens=req.n_in,
                output_tokens=req.n_out,
                deps=deps,
                gap_s=gap,
                step=cid,
                parent=parent,
            )
        )
        agent.requests.append(req)
        agent.call_ids.append(cid)
        return cid

    def _fan_out(self, group: list[_SubAgent], spawn: int | None, spawn_req: _Request | None) -> tuple[list[int], float]:
        """Add a fan-out's calls; return each foreground sub-agent's last call and when the last ended.

        Background sub-agents start from ``spawn`` like the others but are left out of the
        join, so the parent's next call does not wait for them.
        """
        joins: list[int] = []
        join_end = float("-inf")
        for sa in group:
            agent = _Agent(sa.agent_id, sa.tool_tokens, sa.system_tokens)
            self.agents.append(agent)
            last: int | None = None
            last_req: _Request | None = None
            for req in sa.requests:
                if last is not None and last_req is not None:
                    last = self._add(req, sa.role, agent, (last,), _chain_gap(req, last_req), None)
                else:
                    deps, gap = _first_link(sa, req, spawn, spawn_req)
                    last = self._add(req, sa.role, agent, deps, gap, spawn)
                last_req = req
            if sa.background or last is None or last_req is None:
                continue  # nothing waits for a background sub-agent
            assert sa.start is not None and sa.done is not None  # every foreground one has both
            joins.append(last)
            end = sa.start + last_req.t + last_req.api if last_req.api is not None else sa.done
            join_end = max(join_end, end)
        return joins, join_end


# --------------------------------------------------------------------------- prompt content


def shared_prefix(tokens: int, tool_tokens: int) -> np.ndarray:
    """Tokens ``[0, tokens)`` of the shared stream "tool definitions, then system prompt"."""
    rows = []
    if min(tokens, tool_tokens) > 0:
        rows.append((TOOLS_KEY, 0, min(tokens, tool_tokens)))
    if tokens > tool_tokens:
        rows.append((SYSTEM_KEY, 0, tokens - tool_tokens))
    return segments(rows)


def slice_segments(segs: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The segments covering tokens ``[lo, hi)`` of the sequence ``segs`` (``hi`` within it)."""
    if hi <= lo:
        return _EMPTY
    tok = segs[:, 2]
    ends = np.cumsum(tok)
    starts = ends - tok
    i0 = int(np.searchsorted(ends, lo, side="right"))
    i1 = int(np.searchsorted(starts, hi, side="left"))
    out = segs[i0:i1].copy()
    cut = lo - int(starts[i0])
    out[0, 1] += cut
    out[0, 2] -= cut
    out[-1, 2] -= int(ends[i1 - 1]) - hi
    return out


def _block_rows(scope: int, ids: np.ndarray, block: int) -> np.ndarray:
    rows = np.empty((len(ids), 3), dtype=np.int64)
    rows[:, 0] = mix_array(scope, ids)
    rows[:, 1] = 0
    rows[:, 2] = block
    return rows


def _full_blocks(agent: _Agent, scope: int, block: int) -> list[np.ndarray]:
    """Each request's full blocks, the leading tools/system blocks re-keyed to the shared streams."""
    reqs = agent.requests
    synth = 0
    if agent.tool_tokens is not None and agent.system_tokens is not None:
        synth = (agent.tool_tokens + agent.system_tokens) // block
    ref = reqs[0].ids
    out = []
    for r in reqs:
        # Leading blocks within the tools+system span that equal the agent's first request.
        lim = min(synth, len(r.ids), len(ref))
        m = 0
        if lim:
            eq = r.ids[:lim] == ref[:lim]
            m = lim if bool(eq.all()) else int(np.argmin(eq))
        rows = _block_rows(scope, r.ids[m:], block)
        if m:
            rows = np.concatenate([shared_prefix(m * block, agent.tool_tokens or 0), rows])
        out.append(rows)
    return out


def _continues(nxt: _Request, req: _Request) -> bool:
    """True when ``nxt`` starts with all of ``req``'s block ids (a conversation continuation)."""
    n = len(req.ids)
    return n > 0 and len(nxt.ids) >= n and bool(np.array_equal(nxt.ids[:n], req.ids))


def _fill_content(agent: _Agent, calls: list[Call], scope: int, block: int, job_id: str) -> None:
    """Set the prompt and output segments of one agent's calls (last call first)."""
    if not agent.requests:
        return
    full = _full_blocks(agent, scope, block)
    tail_scope = stable_key(WORKFLOW_TYPE, job_id, "tail")
    nxt_prompt = _EMPTY
    for j in range(len(agent.requests) - 1, -1, -1):
        req = agent.requests[j]
        cid = agent.call_ids[j]
        head = len(req.ids) * block
        nxt = agent.requests[j + 1] if j + 1 < len(agent.requests) else None
        tail_key = mix(tail_scope, cid)
        output: np.ndarray | None = None
        if nxt is not None and _continues(nxt, req):
            # The tail and the output are what the next prompt shows at those positions; any
            # part the next prompt does not show (it is shorter) stays unique to this call.
            seen = min(req.n_in, nxt.n_in)
            parts = [full[j], slice_segments(nxt_prompt, head, seen)]
            if req.n_in > seen:
                parts.append(segments([(tail_key, seen - head, req.n_in - seen)]))
            prompt = np.concatenate(parts)
            if req.n_out:
                shown = max(0, min(req.n_in + req.n_out, nxt.n_in) - req.n_in)
                out = [slice_segments(nxt_prompt, req.n_in, req.n_in + shown)]
                if req.n_out > shown:
                    out.append(segments([(stable_key("out", job_id, cid), shown, req.n_out - shown)]))
                output = np.concatenate(out)
        elif req.n_in > head:
            prompt = np.concatenate([full[j], segments([(tail_key, 0, req.n_in - head)])])
        else:
            prompt = full[j]
        calls[cid].prompt = prompt
        calls[cid].output = output
        nxt_prompt = prompt


# --------------------------------------------------------------------------- importer


def session_job(path: Path, options: LoadOptions) -> Job:
    """The job of one session file."""
    path = Path(path)
    session = parse_session(path)
    built = _Builder(session, options.max_gap_s)
    job_id = path.stem
    scope = stable_key(WORKFLOW_TYPE, path.stem)
    for agent in built.agents:
        _fill_content(agent, built.calls, scope, session.block, job_id)
    return Job(job_id, WORKFLOW_TYPE, job_id, built.calls, arrival_s=None, source=str(path))


@dataclass(frozen=True)
class ClaudeCodeImporter:
    """Importer of Claude Code session JSON files (one job per file, released by a closed loop)."""

    name: str = "claude-code"
    description: str = "Claude Code session JSON (.json)"

    def sniff(self, path: Path) -> bool:
        """A ``.json`` file whose opening object names ``block_size`` and ``requests``."""
        if data_suffix(path) != ".json":
            return False
        head = read_head(path).lstrip()
        return head.startswith("{") and '"block_size"' in head and '"requests"' in head

    def load(self, path: Path, options: LoadOptions) -> Trace:
        """The session as a one-job trace under a closed loop of one session."""
        return Trace(
            jobs=[session_job(path, options)],
            arrival={"process": "closed", "concurrency": 1},
            meta={"format": self.name, "sources": [str(path)]},
        )


IMPORTER = ClaudeCodeImporter()
