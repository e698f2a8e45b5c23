"""A self-contained HTML report of an experiments root: one file, no server, no network.

The data (lineage, checkpoints, differences from the parent, hyperparameters, data changes,
metric curves) comes from the public reader and is embedded as JSON; a small inline script
draws the tree, the step axis and the curves as SVG, so the page opens from disk anywhere. It
stays readable with a hundred hashes: a chain of single forks stays at one indent level, a
filter box narrows the tree, and the details of one hash show at a time. A damaged experiment
is listed with its reason (``damaged``) and costs nothing but itself.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from .reader import Root, open_root
from .records import runs_in_words

__all__ = ["build_report", "content_security_policy", "report_data"]


def report_data(root: Root | str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (fields are only ever added, never renamed)."""
    opened = root if isinstance(root, Root) else open_root(root)
    hashes = {e.hash for e in opened}
    items = []
    for exp in opened:
        sound_pair = exp.parent in hashes and not exp.damaged
        items.append(
            {
                **exp.to_json(),
                "checkpoints": [
                    {k: v for k, v in c.to_json().items() if k in ("step", "reason", "size", "created", "metrics")}
                    for c in exp.checkpoints
                ],
                "diff": opened.differences(exp.parent, exp.hash) if sound_pair and exp.parent else {},
                "config": opened.config(exp.hash),
                "data_changes": [c.to_json() for c in exp.data_changes],
                "data_summary": exp.data_summary(),
                "runs_words": "; ".join(run.words(opened.runs) for run in opened.runs_of(exp.hash)),
            }
        )
    items.sort(key=lambda e: e["created"])
    return {
        "root": str(opened.path.resolve()),
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "experiments": items,
        "metrics": {e.hash: opened.metrics(e.hash) for e in opened if opened.metrics(e.hash)},
        "problems": opened.problems,
        "runs": [run.to_json() for run in opened.runs],
        "runs_words": runs_in_words(opened.runs) if opened.runs else "",
    }


def content_security_policy(template: str) -> str:
    """The page's policy: nothing but its own inline script and style, pinned by their SHA-256.

    No network, no inline event handlers, no ``eval``, and (Trusted Types) no markup parsed from
    strings: a string from a root that slipped into the page as markup still could not run.
    """

    def digests(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", template, flags=re.S)  # only the untyped, inline ones
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    return (
        f"default-src 'none'; script-src {digests('script')}; style-src {digests('style')}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )


def build_report(root: Root | str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    opened = root if isinstance(root, Root) else open_root(root)
    # Every "<" escaped: the data can neither close its <script> element nor open a comment in it.
    data = json.dumps(report_data(opened), default=str).replace("<", "\\u003c")
    title = html.escape(f"weightslab-events: {opened.path.resolve().name}")
    template = (Path(__file__).parent / "report_template.html").read_text(encoding="utf-8")
    fill = {"__TITLE__": title, "__DATA__": data, "__CSP__": content_security_policy(template)}
    page = re.sub("|".join(fill), lambda m: fill[m.group(0)], template)  # one pass: no value is re-read
    path = Path(output)
    _refuse_to_overwrite(opened, path)
    path.write_text(page, encoding="utf-8")
    return path


def _refuse_to_overwrite(root: Root, path: Path) -> None:
    """A report never lands among a root's own files, nor over an existing file that is not a page.

    ``-o checkpoints/<hash>/manifest.yaml`` (a typo) would otherwise destroy an experiment's index.
    """
    target = path.resolve()
    for folder in ("checkpoints", "logs", "runs", "data"):
        owned = (root.path / folder).resolve()
        if target == owned or owned in target.parents:
            raise ValueError(f"refusing to write the report to {path}: it is inside {owned}, which the root owns")
    if target.exists() and target.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"refusing to write the report over {path}: it exists and is not an HTML file")
