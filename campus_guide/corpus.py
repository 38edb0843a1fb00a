"""A speech corpus folder: WAV files and `transcripts.tsv` (`path<TAB>text`).

The one reader, shared by the device benchmark (`campus-guide bench asr`) and the Whisper
recipe (`campus-guide train asr`), so a folder that one accepts the other accepts too. Pure
Python: it checks the listing and that every clip exists, and reads no audio.

`transcripts.tsv` is tab-separated: the first two columns are `path` (relative to the folder)
and `text` (what was said); a header line `path<TAB>text...` is optional and further columns are
ignored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from campus_guide.errors import UserError

TRANSCRIPTS = "transcripts.tsv"


class CorpusError(UserError):
    """The corpus folder, its transcripts.tsv or a clip it names is missing or malformed."""


@dataclass(frozen=True)
class Clip:
    path: Path          # absolute
    name: str           # as written in transcripts.tsv
    text: str
    line: int


def load_corpus(folder: str | os.PathLike) -> list[Clip]:
    """The clips `folder/transcripts.tsv` lists, every one checked to exist before any decoding."""
    root = Path(folder)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus folder not found (pass --corpus DIR with WAV files "
                          f"and {TRANSCRIPTS})")
    tsv = root / TRANSCRIPTS
    if not tsv.is_file():
        raise CorpusError(f"{tsv}: not found; the corpus needs a tab-separated {TRANSCRIPTS} "
                          f"with columns path, text")
    try:
        lines = tsv.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{tsv}: not UTF-8 text ({e})") from None
    clips: list[Clip] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if n == 1 and [c.strip().lower() for c in cols[:2]] == ["path", "text"]:
            continue                                   # the header
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise CorpusError(f"{tsv}:{n}: expected 'path<TAB>text', got {line[:80]!r}")
        name = cols[0].strip()
        clips.append(Clip(root / name, name, cols[1].strip(), n))
    if not clips:
        raise CorpusError(f"{tsv}: no clips listed (one 'path<TAB>text' line per WAV file)")
    missing = [c for c in clips if not c.path.is_file()]
    if missing:
        c = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CorpusError(f"{tsv}:{c.line}: audio file {c.name!r} not found in {root}{more}")
    return clips


def write_transcripts(folder: str | os.PathLike, rows: list[tuple[str, str]]) -> Path:
    """`folder/transcripts.tsv` for (path relative to folder, text) rows, with its header."""
    tsv = Path(folder) / TRANSCRIPTS
    tsv.parent.mkdir(parents=True, exist_ok=True)
    for name, text in rows:
        if "\t" in name + text or "\n" in name + text:
            raise CorpusError(f"{tsv}: a path or text may not contain a tab or newline: {name!r}")
    tsv.write_text("path\ttext\n" + "".join(f"{n}\t{t}\n" for n, t in rows), encoding="utf-8")
    return tsv
