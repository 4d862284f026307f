"""Build, describe and verify index folders: corpus → docstore → each retriever's files.

A build writes into a hidden temporary folder beside the target and swaps it in only when complete,
so an interrupted or failed build leaves the previous index untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ragserve import __version__
from ragserve.corpus import ChunkingConfig, DocStore, Document, Manifest, chunk_documents
from ragserve.corpus.loaders import corpus_file, load_corpus
from ragserve.corpus.manifest import checksum_tree, sha256_file
from ragserve.errors import InputError, NotFoundError
from ragserve.retrieval.base import Retriever
from ragserve.retrieval.registry import DEFAULT_RETRIEVERS, kind
from ragserve.retrieval.shards import (
    ShardInfo,
    ShardOptions,
    load_sharded,
    read_map,
    split,
    write_map,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LIBRARIES = (
    "bm25s",
    "faiss-cpu",
    "fm-index",
    "llama-cpp-python",
    "numpy",
    "torch",
    "transformers",
)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(
            f"invalid index name {name!r}: use letters, digits, '.', '_' or '-' (max 100)"
        )
    return name


def index_path(root: Path, name: str) -> Path:
    return Path(root) / check_name(name)


@dataclass
class LoadedIndex:
    """An index opened for serving: manifest, docstore and the retrievers asked for."""

    path: Path
    manifest: Manifest
    docstore: DocStore
    retrievers: dict[str, Retriever]

    def close(self) -> None:
        self.docstore.close()


def build_from_file(corpus: str | Path, name: str, root: Path, **kwargs: Any) -> Manifest:
    """Build an index from a JSONL file or BEIR folder."""
    path = corpus_file(corpus)
    source = {"source": str(path), "sha256": sha256_file(path)}
    return build_index(load_corpus(path), source, name, root, **kwargs)


def build_index(
    documents: Iterable[Document],
    source: dict[str, Any],
    name: str,
    root: Path,
    *,
    retrievers: Sequence[str] = DEFAULT_RETRIEVERS,
    chunking: ChunkingConfig | None = None,
    retriever_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    shards: int = 1,
) -> Manifest:
    """Chunk ``documents``, write the docstore and every retriever, then swap the folder in.

    ``shards > 1`` splits the retrievers by passage range into ``shard-NN`` folders, each with
    its own manifest, plus a shard map; the docstore stays whole, in front.
    """
    check_name(name)
    chunking = chunking or ChunkingConfig()
    kinds = [kind(r) for r in dict.fromkeys(retrievers)]
    if not kinds:
        raise InputError("at least one retriever is needed")
    if shards < 1:
        raise InputError(f"shards must be at least 1, got {shards}")
    unshardable = [k.name for k in kinds if shards > 1 and k.build_shards is None]
    if unshardable:
        raise InputError(
            f"the {', '.join(unshardable)} retriever cannot be sharded (its scores need"
            " corpus-wide n-gram counts); build the shards with --retrievers bm25,dense"
        )
    options = _with_default_tokenizer(retriever_options or {}, [k.name for k in kinds])
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    started = time.perf_counter()
    # mkdir (not mkdtemp, which makes 0700) so the folder gets the umask's permissions and a
    # server running as another user can read it; the pid in the name marks whose it is.
    tmp = root / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        docs = list(tqdm(documents, desc="read corpus", unit="doc", disable=not progress))
        passages = list(chunk_documents(docs, chunking))
        n = DocStore.create(
            tmp / "docstore.sqlite",
            tqdm(passages, desc="docstore", unit="passage", disable=not progress),
        )
        texts = [p.full_text for p in passages]
        params: dict[str, dict[str, Any]] = {}
        timings: dict[str, float] = {}
        ranges = split(n, shards) if shards > 1 else []
        folders = [f"shard-{i:02d}" for i in range(len(ranges))]
        for k in kinds:
            t0 = time.perf_counter()
            opts = dict(options.get(k.name, {}))
            if ranges and k.build_shards is not None:
                parts = [tmp / f / k.name for f in folders]
                params[k.name] = k.build_shards(parts, texts, opts, progress, ranges)
            else:
                params[k.name] = k.build(tmp / k.name, texts, opts, progress)
            timings[k.name] = round(time.perf_counter() - t0, 3)
        if ranges:
            infos = [ShardInfo(f, r.start, len(r)) for f, r in zip(folders, ranges, strict=True)]
            _write_shard_manifests(tmp, name, infos, params)
        manifest = Manifest(
            name=name,
            corpus={
                **source,
                "documents": len(docs),
                "passages": n,
                **({"shards": len(ranges)} if ranges else {}),
                "chunking": {"max_words": chunking.max_words, "overlap": chunking.overlap},
            },
            retrievers=params,
            build={
                "seconds": round(time.perf_counter() - started, 3),
                "retriever_seconds": timings,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "ragserve": __version__,
                "python": platform.python_version(),
                "libraries": _library_versions(),
            },
        )
        manifest.files = checksum_tree(tmp)
        manifest.save(tmp)
        _swap_into_place(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_shard_manifests(
    folder: Path, name: str, shards: Sequence[ShardInfo], params: dict[str, dict[str, Any]]
) -> None:
    for s in shards:
        m = Manifest(
            name=f"{name}.{s.folder}",
            corpus={"passages": s.passages, "offset": s.offset},
            retrievers=params,
        )
        m.files = checksum_tree(folder / s.folder)
        m.save(folder / s.folder)
    write_map(folder, shards, list(params))


def _with_default_tokenizer(
    options: dict[str, dict[str, Any]], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The FM-index is built with the default generator's tokenizer unless one is given."""
    if "fmindex" in names and "tokenizer" not in options.get("fmindex", {}):
        from ragserve.generation.tokenizer import GGUFTokenizer

        options = {
            **options,
            "fmindex": {**options.get("fmindex", {}), "tokenizer": GGUFTokenizer()},
        }
    return options


def documents_checksum(docs: Sequence[Document]) -> str:
    """A corpus checksum for in-memory sources such as the demo corpus."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.title, d.text]).encode())
    return h.hexdigest()


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the hidden work folders of builds whose process is gone (killed with -9, or the
    machine went down); a live build's folders are left alone."""
    removed = []
    for p in Path(root).iterdir():
        m = _TEMPORARY.match(p.name)
        if m and p.is_dir() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` with ``tmp``; the old folder is kept until the new one is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _library_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def open_manifest(root: Path, name: str) -> tuple[Path, Manifest]:
    path = index_path(root, name)
    if not path.is_dir():
        available = list_indexes(root)
        hint = f"; available: {', '.join(available)}" if available else "; build one first"
        raise NotFoundError(f"index {name!r} not found in {root}{hint}")
    return path, Manifest.load(path)


def list_indexes(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if _NAME.match(p.name) and (p / "manifest.json").is_file()  # never a hidden work folder
    )


def load_index(
    root: Path,
    name: str,
    retrievers: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    shards: ShardOptions | None = None,
) -> LoadedIndex:
    """Open an index; ``retrievers=None`` loads every retriever the index has.

    ``options`` per retriever carry what it needs from outside retrieval, such as the loaded
    generator as the FM-index's tokenizer (checked against the one the index was built with).
    ``shards`` says how a sharded index's shards are reached (default: loaded in this process).
    """
    path, manifest = open_manifest(root, name)
    wanted = list(manifest.retrievers) if retrievers is None else list(retrievers)
    missing = [r for r in wanted if r not in manifest.retrievers]
    if missing:
        raise InputError(
            f"index {name!r} has no {', '.join(missing)} retriever"
            f" (it has: {', '.join(manifest.retrievers)})"
        )
    opts = _with_default_tokenizer(options or {}, wanted)
    shard_map = read_map(path)
    if shard_map is not None:
        how = shards or ShardOptions()
        loaded = dict(load_sharded(path, shard_map, manifest.retrievers, wanted, opts, how))
    else:
        params = manifest.retrievers
        loaded = {r: kind(r).load(path / r, params[r], opts.get(r, {})) for r in wanted}
    return LoadedIndex(path, manifest, DocStore(path / "docstore.sqlite"), loaded)


def verify_index(root: Path, name: str) -> list[str]:
    """Problems with an index folder (checksums, passage count); empty when intact."""
    path, manifest = open_manifest(root, name)
    problems = manifest.verify(path)
    if not problems:
        store = DocStore(path / "docstore.sqlite")
        try:
            if len(store) != manifest.corpus.get("passages"):
                problems.append(
                    f"docstore has {len(store)} passages, manifest says"
                    f" {manifest.corpus.get('passages')}"
                )
        finally:
            store.close()
    return problems
