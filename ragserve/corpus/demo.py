"""The demo corpus: Python's own documentation, which ships with every interpreter.

Sources are ``pydoc_data.topics`` (the language reference topics ``help()`` shows) and the
docstrings of standard-library modules that import cleanly. Modules are imported in a child
process so their import-time side effects (and crashes) never reach the caller.

A signature prints its defaults by value, and a few defaults are the building process's own
state: ``cgi.parse(environ=os.environ)`` would print every environment variable (API keys
included) into a corpus that the server then hands to any client. Such defaults are written as
the expression (``os.environ``, ``sys.executable``), and the child runs with an environment of
``PATH`` alone, so nothing of the builder's environment can reach the index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

from ragserve.corpus.documents import Document
from ragserve.errors import RagServeError

DEMO_NAME = "python-docs"

# Modules with import-time side effects (opening a browser, printing, GUI) or no useful docs.
_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
    "ensurepip", "pydoc_data", "msilib", "winreg", "winsound", "nturl2path", "msvcrt",
    "_winapi", "nt", "xxsubtype", "xxlimited", "xxlimited_35", "__phello__", "__hello__",
}  # fmt: skip

# Bumped when the documents change for the same interpreter: ``index build --demo --if-missing``
# rebuilds an index made from an older revision (revision 1 leaked the environment).
REVISION = 2

_COLLECT = r"""
import contextlib, inspect, io, json, os, sys, warnings
skip = set(json.loads(sys.argv[1]))
# Defaults that are this process's state, written as the expression the source has.
state = {repr(os.environ): "os.environ", repr(sys.executable): "sys.executable"}
docs = []
out = sys.stdout
for name in sorted(sys.stdlib_module_names):
    if name.startswith("_") or name in skip:
        continue
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = __import__(name)
    except BaseException:
        continue
    doc = inspect.getdoc(mod)
    if doc:
        docs.append({"id": "module:" + name, "title": name + " module", "text": doc})
    public = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    for attr in sorted(set(public)):
        obj = getattr(mod, attr, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) not in (name, "_" + name):
            continue
        doc = inspect.getdoc(obj)
        if not doc or len(doc.split()) < 8:
            continue
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = ""
        for value, expression in state.items():
            sig = sig.replace(value, expression)
        qual = name + "." + attr
        docs.append({"id": qual, "title": qual, "text": qual + sig + ": " + doc})
json.dump(docs, out)
"""


def _topics() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield Document(id=f"topic:{key}", title=key.replace("-", " "), text=text)


def _module_docs(timeout: float = 300) -> list[Document]:
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _COLLECT, json.dumps(sorted(_SKIP))],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", os.defpath)},
        )
    except subprocess.TimeoutExpired:
        raise RagServeError("collecting standard-library docstrings timed out") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RagServeError(f"collecting standard-library docstrings failed: {tail[0]}")
    return [Document(**d) for d in json.loads(proc.stdout)]


def demo_documents() -> list[Document]:
    """Language reference topics first, then module and member docstrings, de-duplicated by id."""
    docs: dict[str, Document] = {}
    for d in [*_topics(), *_module_docs()]:
        docs.setdefault(d.id, d)
    return list(docs.values())


def demo_source() -> str:
    """A description of the demo corpus for the manifest: the interpreter version and our
    revision of the collection fix it."""
    return f"python-docs r{REVISION} (Python {sys.version.split()[0]})"
