"""POPE-format files: ``{"question_id", "image", "text", "label"}`` per line (the official POPE layout), with
images resolved against an image directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError


def load_pope_jsonl(path: str | Path, image_dir: str | Path | None = None) -> list[dict]:
    """Rows with ``image`` (a path), ``question`` and ``label`` ("yes"/"no"); a malformed row is an error that
    names its line (nothing is dropped silently)."""
    from ..utils.jsonl import read_jsonl_objects

    path = Path(path)
    base = Path(image_dir) if image_dir else path.parent
    rows = []
    for n, r in read_jsonl_objects(path, what="POPE file"):
        missing = [k for k in ("image", "text", "label") if k not in r]
        if missing:
            raise UserInputError(f"{path}:{n}: missing field(s) {', '.join(missing)} (POPE rows have image/text/label)")
        label = str(r["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise UserInputError(f"{path}:{n}: label {r['label']!r} is not yes/no")
        img = base / r["image"]
        if not img.exists():
            raise UserInputError(f"{path}:{n}: image {img} not found (pass --image-dir)")
        rows.append({"question_id": r.get("question_id", n), "image": str(img), "question": r["text"], "label": label})
    if not rows:
        raise UserInputError(f"{path} has no rows")
    return rows
