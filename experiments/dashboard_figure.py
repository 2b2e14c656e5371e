"""Draws the W&B workspace of ``python -m vaegan.dashboard --dry-run`` as a picture of its layout.

    python -m vaegan.dashboard team/vaegan --dry-run > /tmp/workspace.json
    python experiments/dashboard_figure.py /tmp/workspace.json docs/tracking/dashboard.png

One row per section, one box per panel with its title and the keys it reads (from the JSON, through
``vaegan.reporting.dashboard.describe``): the README's figure, since no screenshot of W&B can be
taken offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from vaegan.reporting.dashboard import describe  # noqa: E402

COLORS = {"Run History Line Plot": "#dbe9f6", "Media Browser": "#fde2c8", "Parallel Coordinates Plot": "#d9f0d3",
          "Vega2": "#ece2f0"}
KINDS = {"Run History Line Plot": "line plot", "Media Browser": "media (step slider)",
         "Parallel Coordinates Plot": "parallel coordinates", "Vega2": "custom chart"}
PER_ROW = 6


def short(key: str) -> str:
    return key.split(":", 1)[1]


def draw(spec: dict, out: Path) -> Path:
    sections = describe(spec)
    rows = [(s["name"], s["panels"][i:i + PER_ROW]) for s in sections for i in range(0, len(s["panels"]), PER_ROW)]
    fig, ax = plt.subplots(figsize=(16, 1.55 * len(rows) + 0.8))
    ax.set_xlim(0, PER_ROW + 1.3)
    ax.set_ylim(-len(rows), 0.7)
    ax.axis("off")
    title = f"W&B workspace '{spec['displayName']}' of {spec['entity']}/{spec['project']}"
    total = sum(len(s["panels"]) for s in sections)
    ax.text(0, 0.35, f"{title}: {len(sections)} sections, {total} panels (python -m vaegan.dashboard --dry-run)",
            fontsize=12, weight="bold")
    previous = None
    for r, (name, panels) in enumerate(rows):
        y = -r - 0.9
        if name != previous:
            ax.text(0, y + 0.42, name, fontsize=11, weight="bold", va="center")
        previous = name
        for c, panel in enumerate(panels):
            x = 1.3 + c
            ax.add_patch(FancyBboxPatch((x, y), 0.92, 0.82, boxstyle="round,pad=0.01",
                                        facecolor=COLORS.get(panel["type"], "#eeeeee"), edgecolor="#555555"))
            keys = [short(k) for k in panel["keys"]]
            body = "\n".join(keys[:5] + ([f"+{len(keys) - 5} more"] if len(keys) > 5 else []))
            ax.text(x + 0.46, y + 0.77, textwrap.fill(panel["title"], 24), ha="center", va="top", fontsize=7, weight="bold")
            ax.text(x + 0.46, y + 0.55, KINDS.get(panel["type"], panel["type"]), ha="center", va="top", fontsize=6.5,
                    style="italic", color="#444444")
            ax.text(x + 0.46, y + 0.43, body, ha="center", va="top", fontsize=6.2, family="monospace")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="the output of python -m vaegan.dashboard ... --dry-run")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {draw(json.loads(args.json.read_text()), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
