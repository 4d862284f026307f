"""The evaluation sets in ``shared/data``: BEIR folders (qrels) and QA sets with gold passages.

Read in place from the path given (``--data`` or ``RAGSERVE_DATA``); never copied.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ragserve.errors import InputError, NotFoundError


@dataclass
class Dataset:
    name: str
    kind: str  # "beir" (graded qrels) or "qa" (gold passages per question)
    corpus: Path
    queries: list[tuple[str, str]]
    relevant: dict[str, dict[str, int]]
    answers: dict[str, list[str]] = field(default_factory=dict)  # QA sets: gold answers


def load_dataset(path: str | Path, split: str = "test") -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise NotFoundError(f"evaluation data not found: {root}")
    corpus = root / "corpus.jsonl"
    if not corpus.is_file():
        raise NotFoundError(f"{root} has no corpus.jsonl")
    qrels = root / "qrels" / f"{split}.tsv"
    if qrels.is_file():
        return _beir(root, corpus, qrels)
    questions = root / "questions.jsonl"
    if questions.is_file():
        return _qa(root, corpus, questions)
    raise InputError(f"{root}: neither a BEIR folder (qrels/{split}.tsv) nor questions.jsonl")


def _beir(root: Path, corpus: Path, qrels_path: Path) -> Dataset:
    relevant: dict[str, dict[str, int]] = {}
    with qrels_path.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            relevant.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    texts = {}
    with (root / "queries.jsonl").open() as f:
        for line in f:
            q = json.loads(line)
            texts[str(q["_id"])] = q["text"]
    missing = [q for q in relevant if q not in texts]
    if missing:
        raise InputError(f"{qrels_path}: queries without text: {missing[:3]}")
    queries = [(q, texts[q]) for q in relevant]
    return Dataset(root.name, "beir", corpus, queries, relevant)


def _qa(root: Path, corpus: Path, questions: Path) -> Dataset:
    queries, relevant, answers = [], {}, {}
    with questions.open() as f:
        for line in f:
            q = json.loads(line)
            gold = q.get("supporting_doc_ids") or q.get("gold_doc_ids")
            if not gold:
                raise InputError(f"{questions}: question {q.get('id')} has no gold passages")
            queries.append((str(q["id"]), q["question"]))
            relevant[str(q["id"])] = {str(d): 1 for d in gold}
            answers[str(q["id"])] = [str(a) for a in q.get("answers", [])]
    return Dataset(root.name, "qa", corpus, queries, relevant, answers)
