"""The call annotation and its wire form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia.errors import PythiaInputError
from pythia.workflow.annotation import CallAnnotation, parse_request_body

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,40}", fullmatch=True)


@settings(max_examples=50, deadline=None)
@given(names, st.text(min_size=1, max_size=60), names, st.none() | st.text(min_size=1, max_size=30),
       st.none() | st.integers(min_value=0, max_value=10_000))
def test_round_trip_through_extra_body(wtype: str, wid: str, role: str, parent: str | None, step: int | None) -> None:
    ann = CallAnnotation(wtype, wid, role, parent_call_id=parent, step=step)
    body = {"model": "m", "messages": [], **ann.to_extra_body()}
    assert parse_request_body(body) == ann
    # vllm_xargs values must be flat scalars (vLLM copies them into SamplingParams.extra_args)
    assert all(isinstance(v, (str, int)) for v in body["vllm_xargs"].values())


def test_nested_form_and_unannotated_requests() -> None:
    ann = parse_request_body({"pythia": {"workflow_type": "rag", "workflow_id": "s1", "agent_role": "reader"}})
    assert ann == CallAnnotation("rag", "s1", "reader")
    assert parse_request_body({"model": "m"}) is None
    assert parse_request_body({"vllm_xargs": {"other_plugin": 3}}) is None


def test_float_step_from_json_clients_is_accepted() -> None:
    ann = CallAnnotation.from_extra_args(
        {"pythia.workflow_type": "t", "pythia.workflow_id": "w", "pythia.agent_role": "r", "pythia.step": 3.0}
    )
    assert ann is not None and ann.step == 3


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"pythia.workflow_type": "t", "pythia.agent_role": "r"}, "workflow_id"),
        ({"pythia.workflow_type": "", "pythia.workflow_id": "w", "pythia.agent_role": "r"}, "workflow_type"),
        ({"pythia.workflow_type": "t", "pythia.workflow_id": "w", "pythia.agent_role": "bad role"}, "agent_role"),
        ({"pythia.workflow_type": "t", "pythia.workflow_id": "w", "pythia.agent_role": "r", "pythia.step": -1}, "step"),
        ({"pythia.workflow_type": "t", "pythia.workflow_id": "w", "pythia.agent_role": "r", "pythia.stpe": 1}, "stpe"),
        ({"pythia.workflow_type": "t", "pythia.workflow_id": "w" * 300, "pythia.agent_role": "r"}, "workflow_id"),
    ],
)
def test_malformed_annotation_names_the_field(fields: dict, needle: str) -> None:
    with pytest.raises(PythiaInputError, match=needle):
        CallAnnotation.from_extra_args(fields)


# --------------------------------------------------------------------------- agent instances, helper, headers


def test_agent_instance_fields_round_trip_and_are_checked() -> None:
    from pythia.workflow.annotation import with_annotation

    body = with_annotation({"temperature": 0.2, "vllm_xargs": {"other": 1, "pythia.step": 9}},
                           workflow_type="coding", workflow_id="job-1", agent_role="engineer",
                           agent_id="engineer/2", parent_agent_id="planner/0")
    assert body["temperature"] == 0.2 and body["vllm_xargs"]["other"] == 1
    assert "pythia.step" not in body["vllm_xargs"]  # the caller's old pythia.* keys are replaced
    ann = parse_request_body(body)
    assert ann == CallAnnotation("coding", "job-1", "engineer", agent_id="engineer/2", parent_agent_id="planner/0")
    with pytest.raises(PythiaInputError, match="agent_id"):
        with_annotation(workflow_type="t", workflow_id="w", agent_role="r", agent_id="")
    with pytest.raises(PythiaInputError, match="unknown field"):
        with_annotation(workflow_type="t", workflow_id="w", agent_role="r", agentid="x")


def test_headers_carry_the_same_fields() -> None:
    from pythia.workflow.annotation import headers_to_extra_args

    xargs = headers_to_extra_args({"X-Pythia-Workflow-Type": "rag", "x-pythia-workflow-id": "s1",
                                   "X-PYTHIA-AGENT-ROLE": "reader", "X-Pythia-Agent-Id": "reader/1",
                                   "X-Pythia-Step": "3", "Authorization": "Bearer k"})
    assert CallAnnotation.from_extra_args(xargs) == CallAnnotation("rag", "s1", "reader", step=3, agent_id="reader/1")
    assert headers_to_extra_args({"X-Pythia-Step": "three"}) == {"pythia.step": "three"}  # left for the plugin to refuse


def _echo_app():  # type: ignore[no-untyped-def]
    """An ASGI app answering with the body and content-length it received."""
    import json as _json

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        length = dict(scope["headers"]).get(b"content-length", b"").decode()
        out = _json.dumps({"body": body.decode("utf-8", "replace"), "length": length}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


def _through_middleware(path: str, headers: dict[str, str], **body):  # type: ignore[no-untyped-def]
    """POST through PythiaHeaders to the echo app; the app's JSON answer."""
    import asyncio

    import httpx

    from pythia.serve.headers import PythiaHeaders

    async def go():  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=PythiaHeaders(_echo_app()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.post(path, headers=headers, **body)).json()

    return asyncio.run(go())


@pytest.mark.parametrize("body, headers, expected", [
    # headers only: merged into vllm_xargs
    ({"model": "m"}, {"X-Pythia-Workflow-Type": "t", "X-Pythia-Workflow-Id": "w", "X-Pythia-Agent-Role": "r"},
     {"pythia.workflow_type": "t", "pythia.workflow_id": "w", "pythia.agent_role": "r"}),
    # a body field wins over its header; other body keys are kept
    ({"model": "m", "vllm_xargs": {"pythia.agent_role": "body", "k": 1}}, {"X-Pythia-Agent-Role": "header"},
     {"pythia.agent_role": "body", "k": 1}),
    # no Pythia header: the body is not touched
    ({"model": "m"}, {"X-Other": "1"}, None),
])
def test_header_middleware_merges_into_the_body(body, headers, expected) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    got = _through_middleware("/v1/chat/completions", headers, json=body)
    seen = _json.loads(got["body"])
    assert int(got["length"]) == len(got["body"].encode())
    if expected is None:
        assert seen == body
    else:
        assert seen["vllm_xargs"] == expected and seen["model"] == "m"


def test_header_middleware_passes_through_what_it_cannot_read() -> None:
    for raw in (b"not json", b"[1, 2]", b'{"vllm_xargs": 3}', b"\xff\xfe"):
        got = _through_middleware("/v1/completions", {"X-Pythia-Agent-Role": "r"}, content=raw)["body"]
        assert got.encode("utf-8", "replace") == raw.decode("utf-8", "replace").encode()
