"""User corpora: `.txt` (one text a line) or `.jsonl` ({"text": ..., "topic": ...} a line)."""
from __future__ import annotations

import json
from pathlib import Path

from common.errors import CorpusError
from domains.base import Text

ACCEPTED_EXTENSIONS = (".txt", ".jsonl")
DEFAULT_TOPIC = "default"


def load_corpus(path: str | Path, max_chars: int = 2000) -> list[Text]:
    """Texts of a user corpus, stripped, in file order. Raises CorpusError on any problem."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"max_chars must be an integer >= 1, got {max_chars!r}")
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"corpus file {p} does not exist; check the path")
    if p.is_dir():
        raise CorpusError(f"corpus path {p} is a folder; pass a .txt or .jsonl file inside it")
    ext = p.suffix.lower()
    if ext not in ACCEPTED_EXTENSIONS:
        raise CorpusError(
            f"corpus file {p} has extension {ext or '(none)'!r}; use .txt (one text a line) "
            'or .jsonl (one {"text": ...} object a line)')
    try:
        raw = p.read_bytes()
    except PermissionError:
        raise CorpusError(f"corpus file {p} is not readable (permission denied); "
                          "fix its permissions, e.g. chmod u+r") from None
    except OSError as e:
        raise CorpusError(f"corpus file {p} could not be read ({e.strerror or e}); "
                          "check that it is a regular file") from None
    try:
        content = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CorpusError(f"corpus file {p} is not UTF-8 text (bad byte at line {line}); "
                          "save it as UTF-8 text") from None
    if "\x00" in content:
        line = content[:content.index("\x00")].count("\n") + 1
        raise CorpusError(f"corpus file {p} contains a NUL byte on line {line}; "
                          "remove it (is this a binary or UTF-16 file? save it as UTF-8 text)")

    texts: list[Text] = []
    for lineno, line in enumerate(content.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        if ext == ".txt":
            text, topic = line, DEFAULT_TOPIC
        else:
            text, topic = _jsonl_record(p, lineno, line)
        if len(text) > max_chars:
            raise CorpusError(f"corpus file {p}, line {lineno}: text is {len(text)} characters, "
                              f"over the limit of {max_chars}; shorten or split it, "
                              "or raise max_chars")
        texts.append(Text(text=text, topic=topic))
    if not texts:
        raise CorpusError(f"corpus file {p} has no texts (empty or only blank lines); "
                          "add at least one text")
    return texts


def _jsonl_record(p: Path, lineno: int, line: str) -> tuple[str, str]:
    fix = 'write one JSON object a line, e.g. {"text": "3 plus 4 equals 7.", "topic": "addition"}'
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        reason = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise CorpusError(
            f"corpus file {p}, line {lineno}: invalid JSON ({reason}); {fix}") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"corpus file {p}, line {lineno}: expected a JSON object, "
                          f"got {type(obj).__name__}; {fix}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise CorpusError(f'corpus file {p}, line {lineno}: no "text" string; {fix}')
    text = text.strip()
    if not text:
        raise CorpusError(f'corpus file {p}, line {lineno}: "text" is empty; '
                          "give it some text or delete the line")
    topic = obj.get("topic")
    if topic is None:
        topic = DEFAULT_TOPIC
    elif not isinstance(topic, str):
        raise CorpusError(f'corpus file {p}, line {lineno}: "topic" must be a string, '
                          f"got {type(topic).__name__}; {fix}")
    return text, topic.strip() or DEFAULT_TOPIC
