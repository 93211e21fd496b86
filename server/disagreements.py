"""Where a records folder's stated numbers and its logs differ, in words: one sentence per
stored disagreement ({"field", "stated", "logs", "note"}, `server/records/checks.py`), as the CLI prints
it and the experiment page shows it."""

from typing import Any


def sentence(found: dict[str, Any]) -> str:
    """One stored disagreement as a sentence; a side the importer left empty (e.g. no scored
    log at all) is not quoted."""
    what = field_words(str(found.get("field") or "a value"))
    note = str(found.get("note") or "").strip()
    stated, logs = found.get("stated"), found.get("logs")
    if found.get("field") == "official" and note:
        return f"{what}: {note}"  # the note names both numbers and where the official one is
    if stated is None and logs is None:
        return f"{what}: {note}" if note else f"{what}: the folder and its logs disagree"
    parts = []
    if stated is not None:
        parts.append(f"the folder states {value_text(stated)}")
    if logs is not None:
        parts.append(f"the logs show {value_text(logs)}")
    text = f"{what}: " + ", ".join(parts)
    return f"{text} ({note})" if note else text


def field_words(name: str) -> str:
    """"seed_results.42.val_bpb" -> "seed 42's val_bpb (seed_results)"; "logs" -> "train
    logs"; "official" -> "the leaderboard's score"; other names as submission.json spells them."""
    parts = name.split(".")
    if len(parts) == 3:
        return f"seed {parts[1]}'s {parts[2]} ({parts[0]})"
    return {"logs": "train logs", "seeds": "seeds",
            "official": "the leaderboard's score"}.get(name, name)


def value_text(value: Any) -> str:
    """A stated or measured value as a sentence quotes it: floats to 8 significant digits,
    large counts with thousands separators, lists joined by commas."""
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return ", ".join(value_text(item) for item in value) or "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.8g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)
