"""Pages and plots made for the Snakemake report (`snakemake --report report.zip`).

The report shows images, HTML and PDF inline; CSV logs only download. Tables a person reads
(validation metrics, dataset counts) are therefore rendered here as small HTML pages.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from pathlib import Path

from blkassist.fsutil import atomic_path, read_json

log = logging.getLogger(__name__)

_STYLE = (
    "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin:0 0 1em}"
    "th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th{background:#f4f4f4}td.text,th.text{text-align:left}</style>"
)


def _table(header: list[str], rows: list[list]) -> str:
    def cell(tag, value):
        text = "" if value is None else str(value)
        numeric = text.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()
        kind = "" if numeric else " class='text'"
        return f"<{tag}{kind}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h) for h in header)
    body = "\n".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def _write_page(path: str | Path, title: str, parts: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title>{_STYLE}</head><body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(parts)
            + "\n</body></html>\n"
        )


def csv_table_page(csv_path: str | Path, page: str | Path, title: str, note: str = "") -> int:
    """An HTML page with the CSV's rows as a table; returns the number of rows."""
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = list(reader)
    parts = [f"<p>{html.escape(note)}</p>"] if note else []
    parts.append(_table(header, rows))
    parts.append(f"<p>From <code>{html.escape(str(csv_path))}</code>.</p>")
    _write_page(page, title, parts)
    log.info("read %s (%d rows); wrote %s", csv_path, len(rows), page)
    return len(rows)


def dataset_summary_page(dataset_dir: str | Path, page: str | Path) -> dict:
    """What a training set holds: images per split and kind, buckets, sources, settings."""
    summary = read_json(Path(dataset_dir) / "dataset.json")
    counts = summary["counts"]
    kinds = sorted({kind for split in counts.values() for kind in split})
    parts = [
        "<h2>Images per split</h2>",
        _table(
            ["split", *kinds, "total"],
            [
                [split, *(by_kind.get(k, 0) for k in kinds), sum(by_kind.values())]
                for split, by_kind in sorted(counts.items())
            ],
        ),
        f"<p>Detail crops: {summary['detail_share']:.0%} of the unflipped images.</p>",
        "<h2>Resolution buckets</h2>",
        _table(["bucket", "images"], sorted(summary["buckets"].items())),
        "<h2>Source scans</h2>",
        _table(["id", "sha256"], [[s["id"], s["sha256"]] for s in summary["sources"]]),
        "<h2>Settings</h2>",
        f"<pre>{html.escape(json.dumps(summary['settings'], indent=2, sort_keys=True))}</pre>",
    ]
    _write_page(page, f"Training set {summary['name']}", parts)
    log.info("read %s/dataset.json; wrote %s", dataset_dir, page)
    return summary


def loss_curves(losses_csv: str | Path, png: str | Path, title: str) -> list[str]:
    """Every loss column of a trainer's losses.csv against its step column; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(losses_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    step = next(key for key in ("iteration", "step") if rows and key in rows[0])
    columns = [k for k in rows[0] if k not in (step, "lr", "seconds")]
    steps = [int(r[step]) for r in rows]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), squeeze=False)
    for axis, column in zip(axes[0], columns, strict=True):
        axis.plot(steps, [float(r[column]) for r in rows], marker=".")
        axis.set_title(column)
        axis.set_xlabel(step)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    log.info("read %s (%d rows); wrote %s with %s", losses_csv, len(rows), png, columns)
    return columns
