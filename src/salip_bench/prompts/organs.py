"""Sentences for organs picked by name (``dataset.organs``): the organ prompt library, its aliases, and
template sentences for an organ it does not hold.

The library (``prompts/organs.json``) holds visually descriptive sentence sets for the 13 BTCV organs,
both lungs, heart, brain, bladder, prostate and a few bowel segments, keyed by TotalSegmentator's
names; ``prompts/aliases/organs.json`` maps BTCV / AMOS / plain-English names onto them. A label name
is matched case- and separator-insensitively (``Kidney-Left``, ``left kidney``, ``kidney_left``).
"""
from __future__ import annotations

import json
import logging
import re
from importlib import resources

from salip_bench.class_prompts import PROMPTS_PACKAGE, load_class_prompts

log = logging.getLogger(__name__)

LIBRARY = "organs"
TEMPLATES = ("a {name} on a medical image",
             "the {name} as seen in a cross-sectional scan",
             "an image region showing the {name}",
             "the outline of the {name} in a slice of the body")


def normalise(name: str) -> str:
    """``Kidney-Left`` / ``kidney left`` → ``kidney_left``."""
    return re.sub(r"[\s\-/]+", "_", name.strip().casefold())


def aliases() -> dict[str, str]:
    """{normalised alias or name: library name}."""
    data = json.loads((resources.files(PROMPTS_PACKAGE) / "aliases" / f"{LIBRARY}.json").read_text())
    table = {normalise(name): name for name in data}
    for name, names in data.items():
        table.update({normalise(alias): name for alias in names})
    return table


def organ_prompts(organs: list[str], prompts: str | None = LIBRARY,
                  quiet: bool = False) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Sentences for each organ of a run, and where they came from.

    Args:
        organs: the run's target names (``dataset.organs`` as resolved against the label table).
        prompts: the prompt set to look in first (a built-in set or a user JSON file {name: [sentences]};
            unset: only the built-in ``organs`` library); names are matched directly, then through the
            library's aliases.

    Returns:
        ({organ: [sentences]}, {organ: "library" | "prompts" | "template"}); an organ found nowhere gets
        template sentences over its name, with a warning line.
    """
    library = load_class_prompts(LIBRARY)
    given = load_class_prompts(prompts) if prompts not in (None, "", "???", LIBRARY) else {}  # ???: unset
    given_folded = {normalise(k): k for k in given}
    alias = aliases()
    sentences: dict[str, list[str]] = {}
    sources: dict[str, str] = {}
    for organ in organs:
        key = normalise(organ)
        if key in given_folded:
            sentences[organ], sources[organ] = given[given_folded[key]], "prompts"
        elif alias.get(key) in library:
            sentences[organ], sources[organ] = library[alias[key]], "library"
        else:
            readable = organ.replace("_", " ")
            sentences[organ] = [t.format(name=readable) for t in TEMPLATES]
            sources[organ] = "template"
            if not quiet:
                log.warning("organ %r has no sentences in the prompt library: using template sentences over its "
                            "name (prompt_source: template); give your own with dataset.prompts=FILE.json", organ)
    return sentences, sources
