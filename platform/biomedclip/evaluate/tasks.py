"""Zero-shot task definitions: class names, prompt templates, and how dataset labels map onto classes.

The built-in tasks live in tasks.yaml next to this file (the format is described there); users add their own in a
YAML file of the same shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from biomedclip.config import ConfigError, from_dict

BUILTIN_TASKS = Path(__file__).with_name("tasks.yaml")


@dataclass
class ZeroShotTask:
    templates: list[str]
    classes: dict[str, str]  # dataset label -> class name; the order is the class index
    name: str = ""
    format: Literal["auto", "folder", "pcam", "rsna", "csv", "parquet"] = "auto"
    primary_metric: Literal["accuracy", "auroc", "macro_f1"] = "accuracy"
    keywords: dict[str, list[str]] = field(default_factory=dict)  # parquet tasks: label -> caption keywords

    def __post_init__(self) -> None:
        where = self.name or "task"
        self.classes = {str(label): str(name) for label, name in self.classes.items()}
        if len(self.classes) < 2:
            raise ConfigError(f"{where}.classes: a task needs at least two classes")
        if len(set(self.classes.values())) != len(self.classes):
            raise ConfigError(f"{where}.classes: class names must be distinct")
        if not self.templates:
            raise ConfigError(f"{where}.templates: give at least one template")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ConfigError(f"{where}.templates: {template!r} must hold exactly one {{}} for the class name")
        self._check_keywords(where)
        if self.primary_metric == "auroc" and len(self.classes) != 2:
            raise ConfigError(f"{where}.primary_metric: auroc needs a binary task")

    def _check_keywords(self, where: str) -> None:
        self.keywords = {str(label): [str(k).lower() for k in words] for label, words in self.keywords.items()}
        if (self.format == "parquet") != bool(self.keywords):
            raise ConfigError(f"{where}.keywords: required for format parquet, and only there")
        unknown = sorted(set(self.keywords) - set(self.classes))
        if unknown:
            raise ConfigError(f"{where}.keywords.{unknown[0]}: not one of the task's class labels")

    @property
    def labels(self) -> list[str]:
        return list(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.values())

    def class_index(self, label: str) -> int | None:
        """Class index of a dataset label; None when the task does not know the label."""
        return self.labels.index(label) if label in self.classes else None


def load_tasks(tasks_file: str | Path | None = None) -> dict[str, ZeroShotTask]:
    """The built-in tasks, updated with those of `tasks_file`."""
    raw = _read_yaml(BUILTIN_TASKS)
    if tasks_file is not None:
        raw.update(_read_yaml(Path(tasks_file)))
    return {name: from_dict(ZeroShotTask, {**spec, "name": name}, prefix=name) for name, spec in raw.items()}


def load_task(name: str, tasks_file: str | Path | None = None) -> ZeroShotTask:
    tasks = load_tasks(tasks_file)
    if name not in tasks:
        raise ConfigError(f"zeroshot.task: unknown task {name!r} (known: {', '.join(sorted(tasks))})")
    return tasks[name]


def caption_label(task: ZeroShotTask, caption: str) -> tuple[str | None, str]:
    """(label, "") for a caption that mentions exactly one class's keywords; otherwise (None, why not)."""
    text = caption.lower()
    matches = [label for label, words in task.keywords.items() if any(_mentions(text, word) for word in words)]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, "caption mentions no class keyword"
    return None, f"caption mentions several classes ({', '.join(matches)})"


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read tasks: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(spec, dict) for spec in data.values()):
        raise ConfigError(f"{path}: expected a mapping of task name -> task definition")
    return data
