"""What ragtune serves on its own: the `grounded` profile, and the demo's documents and adapter.

`ragtune serve`, `ragtune demo` and `ragtune eval qa` (in-process) all add `grounded` through
`with_grounded`, so an evaluation asks the same profile a server answers with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ragtune.core.errors import RagtuneError
from ragtune.serving.grounding import Grounding, profile_floor
from ragtune.serving.settings import ProfileSettings, Settings

console = Console(stderr=True)  # notes about the start, never mixed into a command's output (`--json`)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "house-style"
DEMO_ADAPTER = "house-style"
READER_ADAPTER = "reader"
GROUNDED_PROFILE = "grounded"
# Sources per question for `grounded` and `demo`. 3 and 4 rank quotations alike on five sets and
# the relevance floor's curve is the same at both (bench/results/quote-rank.md, floor.md);
# checked grounding was measured at 3 (checked.md), and a prompt with one source fewer comes
# sooner. At 4, a fourth source sharing the question's words can push the sentence that answers
# out of the quotations offered (the demo's Lantern Line question).
SOURCES = 3


def trained_adapter(settings: Settings, name: str, otherwise: str) -> str | None:
    """`name` when adapters/NAME is a usable adapter for the base model; else None, after a
    line saying why and what is served instead (`otherwise`)."""
    from ragtune.core.adapters import inspect_adapter

    try:
        inspect_adapter(
            settings.adapters_dir / name,
            base_model_path=settings.base_model_path,
            max_lora_rank=settings.engine.max_lora_rank,
        )
    except RagtuneError as exc:
        console.print(f"[yellow]no {name} adapter[/] ({exc.message}): {otherwise}")
        return None
    return name


def model_grounding(path: Path) -> Grounding:
    """How the `grounded` profile holds this base model's answers: as its catalogue entry says
    (measured: `checked` where the model reads its sources, `extractive` where it does not,
    bench/results/checked.md); `checked` for a model from outside the catalogue."""
    from ragtune.core.models import catalogue_entry

    entry = catalogue_entry(path)
    return entry.grounding if entry else "checked"


def with_grounded(settings: Settings) -> Settings:
    """Settings that also serve the `grounded` profile: answers from the sources of the collection
    a request names (`rag.collection`) with extractive grounding (serving.grounding: an answer
    quotes a source with its marker, or abstains, as it does below the relevance floor), by the
    reader adapter (`make reader-adapter`, which is trained to answer so) once it is trained,
    else by the base model. A profile of the same name in the settings wins."""
    if GROUNDED_PROFILE in settings.serving.profiles:
        return settings
    adapter = settings.serving.adapters.get(READER_ADAPTER) and READER_ADAPTER
    adapter = adapter or trained_adapter(
        settings,
        READER_ADAPTER,
        "the `grounded` profile uses the base model. `make reader-adapter` trains it",
    )
    adapters = (
        {READER_ADAPTER: READER_ADAPTER, **settings.serving.adapters}
        if adapter
        else settings.serving.adapters
    )
    grounding: Grounding = "extractive" if adapter else model_grounding(settings.base_model_path)
    profile = ProfileSettings(
        adapter=adapter, top_k=SOURCES, grounding=grounding, min_similarity=profile_floor(grounding)
    )
    profiles = {**settings.serving.profiles, GROUNDED_PROFILE: profile}
    serving = settings.serving.model_copy(update={"adapters": adapters, "profiles": profiles})
    return settings.model_copy(update={"serving": serving})


def demo_profile(settings: Settings, adapter: str | None) -> ProfileSettings:
    """The demo's profile: the handbook's collection, with the house-style adapter when it is
    trained (its style needs free decoding). Without it the answers are held to the handbook as
    `grounded` holds this base model's (quoted, or checked where the model reads), under the same
    relevance floor: free, a model that cannot read answers the newcomer's questions uncited
    (bench/results/models.md)."""
    grounding = None if adapter else model_grounding(settings.base_model_path)
    return ProfileSettings(
        adapter=adapter,
        collection="demo",
        top_k=SOURCES,
        grounding=grounding,
        min_similarity=profile_floor(grounding) if grounding else None,
    )


DEMO_OWNER = {"owner": "ragtune-demo"}


def sync_demo_documents(collection: Any, path: Path) -> dict[str, int]:
    """Make the demo's own documents in `collection` those of a JSONL file (id, text, title,
    source). Its documents carry `DEMO_OWNER` in their metadata; documents a user added to the
    collection are never touched (unless they reuse a demo document's id)."""
    import json

    from ragtune.retrieval import Document

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    docs = [Document(**{**r, "metadata": {**r.get("metadata", {}), **DEMO_OWNER}}) for r in rows]
    result = collection.upsert(docs)
    keep = {d.id for d in docs}
    gone = [i for i in collection.metadata_where(DEMO_OWNER) if i not in keep]
    removed = collection.delete(gone) if gone else 0
    return {
        "added": len(result.added),
        "updated": len(result.updated),
        "unchanged": len(result.unchanged),
        "deleted": removed,
    }
