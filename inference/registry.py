"""The model registry, on disk: ``<data>/models/<name>/<version>/`` holds a model's own files and ``card.json``,
which says what it is (its version, feature service and feature order, the training set's time range and row
count, its metrics, the code revision that trained it). Versions count up from 1 per model; a version's folder is
written in full under a temporary name and then renamed, so a reader never meets half a model. Scoring loads the
newest version, or the one pinned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cdcf.errors import PipelineError
from cdcf.settings import Settings

CARD = "card.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ModelNotFound(PipelineError):
    """No such model, or no such version of it, in the registry."""


@dataclass(frozen=True)
class ModelCard:
    name: str  # the feature service it scores, e.g. fraud_detection_v1
    version: int
    kind: str  # xgboost, torch or kmeans
    service: str
    features: list[list[str]]  # (view, feature) pairs, in the model's input order
    request_features: list[str]  # computed per request (cdcf.features.fraud_request_features), after them
    trained_from: str | None  # the training set's earliest and latest as-of times
    trained_to: str | None
    rows: int
    metrics: dict
    code_revision: str
    created_at: str
    extra: dict = field(default_factory=dict)  # what the model's own loader needs besides its files

    def folder(self, settings: Settings) -> Path:
        return root(settings) / self.name / str(self.version)

    def line(self) -> str:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in self.metrics.items() if isinstance(v, int | float))
        return (
            f"{self.name} v{self.version} ({self.kind}, {len(self.features) + len(self.request_features)} "
            f"features, {self.rows} rows {self.trained_from} .. {self.trained_to}, code {self.code_revision}, "
            f"{self.created_at}): {shown}"
        )


def root(settings: Settings) -> Path:
    return settings.paths.data / "models"


def save(settings: Settings, card: dict, write: Callable[[Path], None]) -> ModelCard:
    """Register a new version of ``card["name"]``: ``write(folder)`` writes the model's files, then the card."""
    models = root(settings) / card["name"]
    models.mkdir(parents=True, exist_ok=True)
    version = max(versions(settings, card["name"]), default=0) + 1
    staging = models / f".v{version}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write(staging)
    saved = ModelCard(
        **{
            **card,
            "version": version,
            "code_revision": code_revision(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    (staging / CARD).write_text(json.dumps(asdict(saved), indent=2, default=str))
    staging.rename(models / str(version))
    return saved


def versions(settings: Settings, name: str) -> list[int]:
    folder = root(settings) / name
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / CARD).exists())
        if folder.is_dir()
        else []
    )


def card(settings: Settings, name: str, version: int | None = None) -> ModelCard:
    """The card of ``name`` at ``version``, or of its newest version."""
    known = versions(settings, name)
    if not known:
        raise ModelNotFound(f"no model {name} in {root(settings)}: train it first (`cdcf train-model --model {name}`)")
    if version is not None and version not in known:
        raise ModelNotFound(f"{name} has no version {version}; it has {', '.join(map(str, known))}")
    chosen = root(settings) / name / str(version or known[-1]) / CARD
    return ModelCard(**json.loads(chosen.read_text()))


def cards(settings: Settings) -> list[ModelCard]:
    """Every version of every model, by name then version."""
    folder = root(settings)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [card(settings, name, v) for name in names for v in versions(settings, name)]


def code_revision() -> str:
    """The commit of the code that trains, with "+dirty" when the checkout has changes; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
