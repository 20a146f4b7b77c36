"""Per-dataset text prompts for language–image matching (PLIMSeg).

A prompt bank has, for each label class, a few descriptions of that tissue; templates that wrap a
description ("an H&E image of {}."), whose embeddings are averaged (CLIP's prompt ensembling); and
background prompts — white background, blank glass and tissue types outside the label set — that
the co-occurring background suppression loss pushes the object regions away from. Every field can
be overridden in the run config (``plimseg.prompts``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TEMPLATES = (
    "{}.",
    "an H&E stained histopathology image of {}.",
    "a histopathology patch showing {}.",
    "a microscopy image of {}.",
)

CLASS_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    # LUAD-HistoSeg (Han et al. 2022)
    "tumor_epithelial": ("tumor epithelial tissue", "lung adenocarcinoma tumor epithelium"),
    "necrosis": ("necrosis tissue", "necrotic tissue"),
    "lymphocyte": ("lymphocyte tissue", "dense lymphocytes"),
    "tumor_associated_stroma": ("tumor-associated stroma tissue", "desmoplastic tumor stroma"),
    # BCSS-WSSS / WSSS4LUAD
    "tumor": ("tumor tissue", "carcinoma cells"),
    "stroma": ("stroma tissue", "fibrous stroma"),
    "normal": ("normal tissue", "normal epithelium"),
    # EBHI-Seg (colorectal biopsies); "background" there is everything outside glands and lesions
    "adenocarcinoma": ("colorectal adenocarcinoma", "malignant glands of adenocarcinoma"),
    "high_grade_in": ("high-grade intraepithelial neoplasia", "glands with high-grade dysplasia"),
    "low_grade_in": ("low-grade intraepithelial neoplasia", "glands with low-grade dysplasia"),
    "polyp": ("colorectal polyp", "hyperplastic polyp glands"),
    "serrated_adenoma": ("serrated adenoma", "glands with a serrated architecture"),
    "background": ("lamina propria and stroma without glands", "non-glandular tissue and lumen"),
    # GlaS / CRAG
    "gland": ("colon glands", "glandular epithelium"),
}

BACKGROUND_PROMPTS = (
    "white background",
    "blank glass slide",
    "empty space",
    "adipose tissue",
    "blood vessels and red blood cells",
    "mucus",
)


@dataclass(frozen=True)
class PromptBank:
    """Descriptions per label class (in label order), the templates, and the background prompts."""

    classes: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    background: tuple[str, ...]

    def class_prompts(self, k: int) -> list[str]:
        """Every template × description of class ``k`` (their embeddings are averaged)."""
        return [t.format(d) for d in self.classes[k] for t in self.templates]

    def background_prompts(self) -> list[str]:
        return [t.format(b) for b in self.background for t in self.templates]


def default_descriptions(name: str) -> tuple[str, ...]:
    """Known descriptions of a class, or its readable name + " tissue" for classes we do not know."""
    readable = name.replace("_", " ").strip()
    return CLASS_DESCRIPTIONS.get(name.lower(), (readable if "tissue" in readable else f"{readable} tissue",))


def build_prompt_bank(label_classes: Sequence[str], classes: Mapping[str, Sequence[str]] | None = None,
                      templates: Sequence[str] | None = None,
                      background: Sequence[str] | None = None) -> PromptBank:
    """The prompt bank of a dataset's label classes; given fields override the defaults.

    Raises
    ------
    ValueError
        For an override naming a class that is not a label class, an empty list, or a template
        without exactly one ``{}``.
    """
    overrides = dict(classes or {})
    unknown = sorted(set(overrides) - set(label_classes))
    if unknown:
        raise ValueError(f"prompts given for {', '.join(unknown)}, which are not label classes of this dataset "
                         f"({', '.join(label_classes)}) (fix: correct plimseg.prompts.classes)")
    empty = sorted(name for name, given in overrides.items() if not given)
    if empty or (templates is not None and not templates):
        raise ValueError(f"empty prompt list for {', '.join(empty) or 'templates'} (fix: give at least one, or leave "
                         f"the field out for the defaults)")
    described = tuple(tuple(overrides.get(name) or default_descriptions(name)) for name in label_classes)
    templates = tuple(templates or TEMPLATES)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"prompt templates need exactly one '{{}}': {bad} (fix: plimseg.prompts.templates)")
    background = tuple(background if background is not None else BACKGROUND_PROMPTS)
    if not background:
        raise ValueError("plimseg.prompts.background is empty (fix: give at least one prompt, or switch off "
                         "the cbs loss)")
    return PromptBank(described, templates, background)
