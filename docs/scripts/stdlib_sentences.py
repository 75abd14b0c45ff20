"""A corpus of real English sentences nobody here wrote: the first sentence of the docstrings of
Python's standard library (public functions and classes), de-duplicated, 20-160 characters."""
import importlib
import inspect
import re
import sys
out, seen = [], set()
for m in sorted(sys.stdlib_module_names):
    if m.startswith("_") or m in ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"):
        continue
    try:
        mod = importlib.import_module(m)
    except Exception:
        continue
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        first = re.split(r"(?<=[.!?])\s", " ".join(doc.split("\n\n")[0].split()), maxsplit=1)[0]
        if 20 <= len(first) <= 160 and first[0].isupper() and first.endswith(".") and first not in seen:
            seen.add(first)
            out.append(first)
print("\n".join(out[:: max(1, len(out) // 1000)][:1000]))
