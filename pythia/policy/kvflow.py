"""KVFlow (Pan et al., arXiv 2507.07400): workflow-aware eviction by steps-to-execution, with prefetch.

KVFlow serves multi-agent workflows on SGLang's (hierarchical) radix cache. The application
(e.g. a MetaGPT-style framework) declares its *agent step graph*; from the current step
KVFlow gives every agent a *steps-to-execution* value: 0 for agents running in the current
step, 1 for the next step, and so on (unreachable agents: infinity). A cache node takes the
smallest value among the agents whose prompts go through it (a shared prefix stays as long
as any near agent needs it), and eviction takes the node with the largest value first, least
recently used among equals. In the background KVFlow loads from CPU memory to the GPU the
prefixes of the agents of the next step, overlapped with the current step's compute.

What this baseline may know. It is given the step graph the application declares: the
workflow specs in ``workloads/`` (or the ``specs`` parameter), which name each step's
role and next steps, exactly what a workflow framework hands KVFlow. It learns no
transition probabilities and reads no trace's future: the job's progress comes from the
workflow service (the roles of finished calls). A workflow type without a spec (an
imported trace) has no step graph: its blocks rank as unknown and fall back to LRU order.

Host side. Eviction order is a comparator over evictable blocks, honoured by the simulator
only (``reorders_eviction``); vLLM's block pool is LRU. Prefetch uses the ``prefetch``
action, which loads host-DRAM blocks ahead of use; the host tier (``host_kv_gib`` in the
system file, SGLang's hierarchical cache) receives evicted blocks by write-back.
"""

from __future__ import annotations

from collections import deque
from operator import neg
from pathlib import Path
from typing import Iterable, Sequence

from pythia.errors import PythiaInputError
from pythia.policy.base import CacheAction, CachePolicy
from pythia.policy.views import BlockView, ReplicaView, RequestView
from pythia.policy.workflow import Predictor

INF = 1 << 30


class StepGraph:
    """Role-level steps-to-execution of one workflow type, from its declared step graph.

    ``dist[a][b]`` is the number of step transitions from a step of role ``a`` to a step of
    role ``b`` (0 when ``a == b``: the same step keeps running); ``start`` is the role of
    the first step.
    """

    def __init__(self, start_role: str, step_roles: dict[str, str], edges: dict[str, list[str]]) -> None:
        self.start = start_role
        roles = set(step_roles.values())
        self.dist: dict[str, dict[str, int]] = {}
        for a in roles:
            best: dict[str, int] = {a: 0}
            frontier = deque((s, 0) for s, r in step_roles.items() if r == a)
            seen = {s for s, _ in frontier}
            while frontier:
                s, d = frontier.popleft()
                for t in edges.get(s, []):
                    if t in step_roles and t not in seen:
                        seen.add(t)
                        frontier.append((t, d + 1))
                        r = step_roles[t]
                        best[r] = min(best.get(r, INF), d + 1)
            self.dist[a] = best

    def steps(self, last_role: str | None, role: str) -> int:
        """Steps until ``role`` runs again, given the role of the job's latest finished call."""
        src = self.start if last_role is None else last_role
        if last_role is None and role == self.start:
            return 0
        return self.dist.get(src, {}).get(role, INF)

    @classmethod
    def from_spec_file(cls, path: Path) -> tuple[str, "StepGraph"]:
        """The workflow type and step graph of one workflow spec file."""
        from pythia.workflow.spec import END, load_spec

        spec = load_spec(path)
        step_roles = {name: st.role for name, st in spec.steps.items()}
        edges = {name: [e.to for e in st.next if e.to != END] for name, st in spec.steps.items()}
        return spec.name, cls(spec.steps[spec.start].role, step_roles, edges)


def load_graphs(paths: Iterable[str | Path]) -> dict[str, StepGraph]:
    """Step graphs by workflow type from spec files (files that are not specs are skipped)."""
    out: dict[str, StepGraph] = {}
    for p in paths:
        try:
            name, graph = StepGraph.from_spec_file(Path(p))
        except PythiaInputError:
            continue
        out[name] = graph
    return out


class KVFlowCache(CachePolicy):
    """Steps-to-execution eviction over the declared agent step graph, with next-step prefetch.

    Args:
        specs: workflow spec files declaring the step graphs (default: ``workloads/*.yaml``).
        prefetch: load the next step's agent prefixes from host memory in the background.
    """

    name = "kvflow"
    reorders_eviction = True

    def __init__(self, specs: list[str] | None = None, prefetch: bool = True) -> None:
        if specs is None:
            from pythia.paths import workloads_dir

            paths: list[Path] = sorted(workloads_dir().glob("*.yaml"))
        else:
            if not isinstance(specs, list):
                raise PythiaInputError(f"{self.name} policy parameter specs: must be a list of workflow spec files")
            paths = [Path(s) for s in specs]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise PythiaInputError(f"{self.name} policy parameter specs: no such file(s) {', '.join(missing)}")
        self.graphs = load_graphs(paths)
        self.prefetch = bool(prefetch)
        self.predictor: Predictor | None = None
        # Block hash -> owners: (workflow type, role, job id or "" when shared by the role's calls).
        self.owners: dict[int, tuple[tuple[str, str, str], ...]] = {}
        self.job_blocks: dict[str, list[int]] = {}  # private blocks per job, dropped when it ends
        self.role_prefix: dict[tuple[str, str], list[int]] = {}  # the chain every call of a role starts with
        self.job_replica: dict[str, int] = {}
        self.prefetched: dict[str, str | None] = {}  # job -> last role when its next step was prefetched

    def bind(self, predictor: Predictor) -> None:
        """Job progress (roles of finished calls) comes from the run's workflow service."""
        self.predictor = predictor

    # ------------------------------------------------------------------ bookkeeping

    def on_finish(self, req: RequestView, replica: ReplicaView, now: float) -> list[CacheAction]:
        wt, role, job = req.workflow_type, req.agent_role, req.job_id
        if wt not in self.graphs:
            return []
        bs = replica.kv.block_size
        chain = req.block_hashes[: (req.prompt_tokens + req.num_output_tokens) // bs].tolist()
        owners, mine = self.owners, self.job_blocks.setdefault(job, [])
        entry = (wt, role, job)
        curs = list(map(owners.get, chain))
        new = [h for h, cur in zip(chain, curs) if cur is None]  # blocks nobody owned yet
        owners.update(dict.fromkeys(new, (entry,)))
        mine.extend(new)
        for h, cur in zip(chain, curs):
            if cur is not None and entry not in cur:
                shared = (wt, role, "")
                if any(o[:2] == (wt, role) for o in cur):  # a second job of this role: the role's prefix
                    cur = tuple(o for o in cur if o[:2] != (wt, role)) + (shared,)
                elif shared not in cur:
                    cur = cur + (entry,)
                owners[h] = cur
        prompt = chain[: req.prompt_tokens // bs]
        key = (wt, role)
        old = self.role_prefix.get(key)
        if old is None:
            self.role_prefix[key] = prompt
        else:
            n = 0
            for a, b in zip(old, prompt):
                if a != b:
                    break
                n += 1
            self.role_prefix[key] = old[:n]
        self.job_replica[job] = replica.replica_id
        return []

    def _forget_ended(self) -> None:
        p = self.predictor
        if p is None:
            return
        for job in [j for j in self.job_blocks if p.job(j) is None]:
            for h in self.job_blocks.pop(job):
                cur = self.owners.get(h)
                if cur is None:
                    continue
                rest = tuple(o for o in cur if o[2] != job)
                if rest:
                    self.owners[h] = rest
                else:
                    del self.owners[h]
            self.job_replica.pop(job, None)
            self.prefetched.pop(job, None)

    # ------------------------------------------------------------------ steps-to-execution

    def _last_roles(self) -> dict[str, tuple[str, str | None]]:
        """Workflow type and latest finished role of every running job."""
        p = self.predictor
        if p is None:
            return {}
        return {j: (i.workflow_type, i.roles_done[-1] if i.roles_done else None) for j, i in p.jobs.items()}

    def owner_steps(self, owner: tuple[str, str, str], last: dict[str, tuple[str, str | None]],
                    by_type: dict[str, list[str | None]]) -> int:
        """Steps-to-execution of one owner: its job's, or the nearest job's for a shared prefix."""
        wt, role, job = owner
        graph = self.graphs.get(wt)
        if graph is None:
            return INF
        if job:
            lr = last.get(job)
            return graph.steps(lr[1], role) if lr is not None else INF
        return min((graph.steps(r, role) for r in by_type.get(wt, ())), default=INF)

    def block_steps(self, hashes: Sequence[int]) -> list[int]:
        """Steps-to-execution of each block (``INF``: no running job needs it)."""
        last = self._last_roles()
        by_type: dict[str, list[str | None]] = {}
        for wt, r in last.values():
            by_type.setdefault(wt, []).append(r)
        of = list(map(self.owners.get, hashes))
        # A value per distinct owner set (few), then one C-level lookup per block.
        memo: dict[tuple | None, int] = {None: INF}
        for owners in set(of):
            if owners is not None:
                memo[owners] = min(self.owner_steps(o, last, by_type) for o in owners)
        out = list(map(memo.__getitem__, of))
        return out

    def eviction_key(self, block: BlockView, now: float) -> tuple[int, float]:
        """Farthest from execution first, least recently used among equals."""
        return (-self.block_steps([block.block_hash])[0], block.last_used_s)

    def eviction_keys(self, hashes: Sequence[int], last_used: Sequence[float], now: float) -> list[tuple[int, float]]:
        return list(zip(map(neg, self.block_steps(hashes)), last_used))

    # ------------------------------------------------------------------ prefetch

    def on_tick(self, replicas: Sequence[ReplicaView], now: float) -> list[CacheAction]:
        self._forget_ended()
        if not self.prefetch or self.predictor is None:
            return []
        live = {r.replica_id for r in replicas}
        actions = []
        for job, (wt, last_role) in self._last_roles().items():
            graph = self.graphs.get(wt)
            rid = self.job_replica.get(job)
            if graph is None or rid not in live or self.prefetched.get(job, "?") == last_role:
                continue
            self.prefetched[job] = last_role
            for role in graph.dist:
                if graph.steps(last_role, role) == 1:
                    chain = self.role_prefix.get((wt, role))
                    if chain:
                        actions.append(CacheAction("prefetch", rid, _array(chain)))
        return actions


def _array(chain: list[int]):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.asarray(chain, dtype=np.int64)
