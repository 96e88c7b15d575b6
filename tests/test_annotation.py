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
