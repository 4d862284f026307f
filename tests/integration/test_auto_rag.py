"""``auto_rag`` with the real model through the real server, the CLI's trace, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ragserve.engine.auto_rag import grounded, parse_turn
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

QUESTION = "Which module compresses data in the gzip format?"


def post(server: LiveServer, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)


def test_auto_rag_answers_with_a_trace_and_the_passages_it_read(live_server: LiveServer) -> None:
    rag = {"strategy": "auto_rag", "max_iterations": 3, "retriever": "bm25"}
    r = post(live_server, messages=[{"role": "user", "content": QUESTION}], rag=rag)
    assert r.status_code == 200, r.text
    body = r.json()
    answer = body["choices"][0]["message"]["content"]
    assert answer.strip() and "Query:" not in answer and "Retrieved Document" not in answer
    trace = body["rag_trace"]
    turns = [s for s in trace if s["kind"] == "model"]
    retrievals = [s for s in trace if s["kind"] == "retrieval"]
    assert turns[0]["text"].startswith("Analysis:") and 1 <= len(retrievals) <= 3
    read = [p for s in retrievals for p in s["passages"]]
    assert len(read) == len(set(read))  # never the same passage twice
    assert [c["id"] for c in body["citations"]] == read
    assert [c["index"] for c in body["citations"]] == list(range(1, len(read) + 1))
    # A base model's queries are anchored: the question, then the model's own query.
    assert retrievals[0]["query"] == f"{QUESTION} {turns[0]['query']}"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0


def test_a_final_answer_ends_the_loop_only_once_the_passages_read_hold_it(
    live_server: LiveServer,
) -> None:
    """``grounded_answers`` (on for base models): every turn's Final Answer is checked against
    the passages read before it; one they hold ends the loop, one they do not searches on."""
    rag = {"strategy": "auto_rag", "max_iterations": 4, "retriever": "bm25",
           "evidence_answer": False}  # fmt: skip
    question = "Which function of the json module turns a string into a Python object?"
    r = post(live_server, messages=[{"role": "user", "content": question}], rag=rag)
    assert r.status_code == 200, r.text
    body = r.json()
    text_of = {c["id"]: f"{c['title']} {c['text']}" for c in body["citations"]}
    trace, read = body["rag_trace"], []
    for i, step in enumerate(trace):
        if step["kind"] == "retrieval":
            read += step["passages"]
        answer = parse_turn(step["text"]).answer if step["kind"] == "model" else None
        if answer is None or step["iteration"] == 0:  # iteration 0: the answer asked for at last
            continue
        later = [s["kind"] for s in trace[i + 1 :]]
        if grounded(answer, " ".join(text_of[p] for p in read)):
            assert "retrieval" not in later  # taken: the loop ends here
        elif step["iteration"] < rag["max_iterations"]:
            assert later and later[0] == "retrieval"  # not taken: it searched on
    assert body["choices"][0]["message"]["content"].strip()


def test_auto_rag_streams_its_steps_when_asked(live_server: LiveServer) -> None:
    """As the paper runs it: the model's own queries, and its own final answer."""
    rag = {"strategy": "auto_rag", "max_iterations": 2, "retriever": "bm25", "trace": True,
           "anchor_queries": False, "evidence_answer": False}  # fmt: skip
    body = {"messages": [{"role": "user", "content": QUESTION}], "rag": rag, "stream": True}
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=body, timeout=300
    ) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    steps = [c["rag_step"] for c in chunks if "rag_step" in c]
    assert steps and steps[0]["kind"] == "model"
    searched = [s["query"] for s in steps if s["kind"] == "retrieval"]
    assert searched and searched[0] == steps[0]["query"]  # the model's own query was searched
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip() and chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("rag", "param", "fragment"),
    [
        ({"strategy": "auto_rag", "max_iterations": 0}, "rag.max_iterations", "greater than"),
        ({"strategy": "auto_rag", "max_iterations": 11}, "rag.max_iterations", "between 1 and 10"),
        ({"strategy": "auto_rag", "max_passages": 11}, "rag.max_passages", "less than"),
        ({"strategy": "auto_rag", "retriever": "nope"}, "rag.retriever", "loaded: bm25"),
    ],
)
def test_bad_auto_rag_options_are_400s_naming_the_field(
    live_server: LiveServer, rag: dict, param: str, fragment: str
) -> None:
    r = post(live_server, messages=[{"role": "user", "content": QUESTION}], rag=rag)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and fragment in err["message"], err


def test_ask_prints_the_trace(demo_index_dir: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ragserve.cli", "ask", QUESTION, "--strategy", "auto_rag",
         "--trace", "--max-iterations", "2", "--retriever", "bm25",
         "--index-dir", str(demo_index_dir), "--n-ctx", "2048"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[1] model" in r.stderr and "retrieval" in r.stderr
    assert "Sources:" in r.stdout and "[1]" in r.stdout.split("Sources:")[1]


def test_eval_qa_on_shared_nq(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "qa.json"
    r = subprocess.run(
        [sys.executable, "-m", "ragserve.cli", "eval", "qa", "--data", str(data_dir / "nq"),
         "--strategy", "auto_rag", "--limit", "3", "--max-iterations", "2", "--concurrency", "2",
         "--index-dir", str(tmp_path / "indexes"), "--n-ctx", "2048", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["questions"] == 3 and report["strategy"] == "auto_rag"
    assert report["concurrency"] == 2
    assert 0 <= report["f1"] <= 1 and 0 <= report["support_recall"] <= 1
    assert 1 <= report["retrievals_mean"] <= 2 and report["empty_share"] <= 1
    assert sum(report["retrievals_histogram"].values()) == 3
