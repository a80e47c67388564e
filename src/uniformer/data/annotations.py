"""Reading annotation sources into ``(path, label)`` samples and class-name lists.

Sources: Kinetics / SlowFast list files (``path label`` per line, the label last so paths may contain
spaces, ``#`` comments; or a CSV with ``path`` and ``label`` columns), with integer labels or class names;
Something-Something V2 JSON (a labels file and annotation lists, the template's ``[something]`` brackets
removed as the SlowFast SSv2 loader does); class-per-subfolder image trees. Missing files are all reported
in one error naming the annotation file, or dropped with a warning when ``skip_missing``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Entry:
    """One annotation line before label resolution: ``where`` locates it in its file (for error messages)."""

    path: str
    label: str
    where: str


def resolve_file(value: str, root: str | Path, key: str) -> Path:
    """Find an annotation file given in config key ``key``: as given (absolute or relative to cwd) or under ``root``."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    candidate = Path(root).expanduser() / path
    if not path.is_absolute() and candidate.is_file():
        return candidate
    tried = f"'{path}'" if path.is_absolute() else f"'{path}' and '{candidate}'"
    raise FileNotFoundError(f"data config: {key} file not found (tried {tried})")


def read_class_names(path: str | Path) -> list[str]:
    """One class name per line (line i = class i); blank lines are ignored, duplicates are an error."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: class-names file is empty")
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if first.setdefault(name, i) != i:
            raise ValueError(f"{path}: class name {name!r} appears twice (classes {first[name]} and {i})")
    return names


def read_list_file(path: str | Path) -> list[Entry]:
    """Parse a ``path label`` list or a ``path,label`` CSV (with header) into raw entries."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    cells = [c.strip().lower() for c in first.split(",")]
    entries: list[Entry] = []
    if path.suffix.lower() == ".csv" or ("path" in cells and "label" in cells):
        header: list[str] | None = None
        for lineno, row in enumerate(csv.reader(lines), start=1):
            if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                missing = [c for c in ("path", "label") if c not in header]
                if missing:
                    raise ValueError(f"{path}: CSV header {row} lacks column(s) {missing}; expected 'path,label'")
                ip, il = header.index("path"), header.index("label")
                continue
            if len(row) <= max(ip, il):
                raise ValueError(f"{path}: line {lineno}: expected {len(header)} columns, got {len(row)}: {row}")
            entries.append(Entry(row[ip].strip(), row[il].strip(), f"line {lineno}"))
        return entries
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{path}: line {lineno}: expected 'path label', got {line!r}")
        entries.append(Entry(parts[0], parts[1], f"line {lineno}"))
    return entries


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def _shown(lines: list[str], limit: int = 50) -> str:
    """The first ``limit`` problems, one per indented line, and how many more there are."""
    return "\n  ".join(lines[:limit]) + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def resolve_labels(entries: list[Entry], classes: list[str] | None, source: str,
                   num_classes: int | None = None) -> list[int]:
    """Convert raw label tokens to indices; integer tokens must be in range, name tokens must be known classes."""
    by_name = {n: i for i, n in enumerate(classes)} if classes is not None else None
    limit = len(classes) if classes is not None else num_classes
    labels, bad = [], []
    for e in entries:
        if _is_int(e.label):
            value = int(e.label)
            if value < 0 or (limit is not None and value >= limit):
                bad.append(f"{e.where}: label {value} outside [0, {limit})" if limit else f"{e.where}: label {value}")
            labels.append(value)
        elif by_name is not None and e.label in by_name:
            labels.append(by_name[e.label])
        else:
            bad.append(f"{e.where}: unknown class name {e.label!r}")
            labels.append(-1)
    if bad:
        raise ValueError(f"{source}: {len(bad)} invalid label(s):\n  {_shown(bad)}")
    return labels


def infer_classes(all_entries: list[list[Entry]], num_classes: int | None,
                  sources: list[str] | None = None) -> list[str]:
    """Classes without a class-names file: ``"0".."K-1"`` for integer labels, sorted names otherwise. Without
    ``num_classes`` integer labels must be exactly ``0..K-1``, or a stray ``99`` in an 8-class list would build a
    100-class model; ``sources[i]`` names the file of ``all_entries[i]`` in the error."""
    tokens = [e.label for entries in all_entries for e in entries]
    if not tokens and num_classes is None:
        raise ValueError("cannot infer classes: the annotation files are empty; give class_names or num_classes")
    if all(_is_int(t) for t in tokens):
        if num_classes is not None:
            return [str(i) for i in range(num_classes)]
        values = {int(t) for t in tokens}
        missing = sorted(set(range(max(values) + 1)) - values)
        if missing:
            first = missing[0]
            names = sources or [f"list {i + 1}" for i in range(len(all_entries))]
            bad = [f"{names[i]}: {e.where}: label {e.label}" for i, entries in enumerate(all_entries)
                   for e in entries if int(e.label) > first]
            raise ValueError(
                f"labels are not the classes 0..K-1: class {first} never appears ({len(missing)} of 0..{max(values)} "
                f"missing), so the class count is unknown; give data.num_classes or data.class_names, or fix:\n  "
                f"{_shown(bad, 20)}")
        return [str(i) for i in range(max(values) + 1)]
    if any(_is_int(t) for t in tokens):
        raise ValueError("labels mix integer indices and class names; give a class_names file to map names")
    return sorted(set(tokens))


def join_root(path: str, root: str | Path) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(os.fspath(root), path)


def check_missing(samples: list[tuple[str, int]], wheres: list[str], source: str, *, skip_missing: bool,
                  exists: Callable[[str], bool] = os.path.isfile, what: str = "files"
                  ) -> tuple[list[tuple[str, int]], int]:
    """Raise one error listing every missing file (or drop them with a warning); returns (samples, num_dropped)."""
    missing = [i for i, (p, _) in enumerate(samples) if not exists(p)]
    if not missing:
        return samples, 0
    if skip_missing:
        shown = ", ".join(samples[i][0] for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        warnings.warn(f"{source}: skipping {len(missing)} of {len(samples)} entries whose {what} are missing "
                      f"({shown})", stacklevel=3)
        drop = set(missing)
        return [s for i, s in enumerate(samples) if i not in drop], len(missing)
    listing = "\n  ".join(f"{wheres[i]}: {samples[i][0]}" for i in missing)
    raise FileNotFoundError(f"{source}: {len(missing)} of {len(samples)} listed {what} are missing:\n  {listing}\n"
                            "Fix the paths (and 'root') or set skip_missing: true in the data config to drop these "
                            "entries.")


# ---------------------------------------------------------------------- Something-Something V2
def normalize_template(text: str) -> str:
    """SSv2 template -> label key: drop the brackets around placeholders and collapse whitespace."""
    return " ".join(text.replace("[", "").replace("]", "").split())


def read_sthv2_labels(path: str | Path) -> list[str]:
    """SSv2 labels JSON: ``{"template text": "index", ...}`` (or a plain list of names); returns names by index."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, list):
        return [normalize_template(str(n)) for n in data]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object mapping class name -> index")
    by_index: dict[int, str] = {}
    for name, value in data.items():
        try:
            idx = int(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: class {name!r} has non-integer index {value!r}") from exc
        if idx in by_index:
            raise ValueError(f"{path}: index {idx} is used by both {by_index[idx]!r} and {name!r}")
        by_index[idx] = normalize_template(name)
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[i] for i in range(len(by_index))]


def read_sthv2_annotations(path: str | Path, classes: list[str], root: str | Path,
                           ext: str) -> tuple[list[tuple[str, int]], list[str]]:
    """SSv2 annotations JSON list -> samples ``(<root>/<id>.<ext>, label)`` and their locations for messages."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of annotation objects")
    by_name = {n: i for i, n in enumerate(classes)}
    samples, wheres, bad = [], [], []
    for k, item in enumerate(data):
        where = f"entry {k}"
        if not isinstance(item, dict) or "id" not in item:
            bad.append(f"{where}: missing 'id'")
            continue
        where = f"entry {k} (id {item['id']})"
        template = item.get("template")
        if template is None:
            bad.append(f"{where}: missing 'template' (unlabelled test annotations cannot be used)")
            continue
        key = normalize_template(str(template))
        if key not in by_name:
            bad.append(f"{where}: template {key!r} is not in the labels file")
            continue
        samples.append((os.path.join(os.fspath(root), f"{item['id']}.{ext}"), by_name[key]))
        wheres.append(where)
    if bad:
        raise ValueError(f"{path}: {len(bad)} invalid annotation(s):\n  {_shown(bad)}")
    return samples, wheres


# ---------------------------------------------------------------------- image folders
def scan_image_folder(folder: str | Path,
                      classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """``folder/<class>/<image>`` -> samples and class names (sorted subfolder names unless ``classes`` given)."""
    folder = Path(folder)
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = subdirs
        if not classes:
            raise ValueError(f"{folder}: no class subfolders found")
    else:
        unknown = sorted(set(subdirs) - set(classes))
        if unknown:
            raise ValueError(f"{folder}: subfolder(s) {unknown} are not among the {len(classes)} known classes")
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for root, dirs, files in os.walk(class_dir, followlinks=True):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    samples.append((os.path.join(root, f), label))
    if not samples:
        raise ValueError(f"{folder}: no images with extensions {IMAGE_EXTENSIONS} found")
    return samples, list(classes)
