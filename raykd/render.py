"""How the CLI shows things: rich tables and lines for epochs, datasets, trials, the study's
verdict and detector events. The library never prints; the CLI calls these."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raykd.config import RaykdConfig

console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def epoch_table(rows: list[dict[str, Any]], title: str) -> Table:
    from raykd import metrics as M

    table = Table(title=title)
    cols = M.shown_columns(rows)
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[fmt(r.get(c)) for c in cols])
    return table


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def show_manifest(cfg: RaykdConfig, manifest: Path) -> None:
    """Counts per split and per voice family, then per split (data.extra rows included)."""
    from raykd.data.dataset import dataset_summary

    rows = dataset_summary(cfg)
    cols = ("clips", "positives", "near_misses", "generated", "stream_minutes", "speakers")
    table = Table(title=f"{manifest}")
    for c in ("split", "family") + cols:
        table.add_column(c.replace("_", " "), justify="right")
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        for r in part:
            table.add_row(split, r["family"], *[fmt(r[c]) for c in cols])
        total = {c: sum(r[c] for r in part) for c in cols}
        table.add_row(f"[bold]{split}[/bold]", "[bold]all[/bold]", *[f"[bold]{fmt(total[c])}[/bold]" for c in cols],
                      end_section=True)
    console.print(table)


def verdict(summary: dict) -> None:
    """distillation_gain with its spread, said plainly; teachers weaker than the student alone."""
    gain = summary.get("distillation_gain")
    colour = {"helped": "green", "did not help": "red"}.get((gain or {}).get("verdict"), "yellow")
    console.print(f"[{colour}]{escape(summary.get('verdict', ''))}[/{colour}]", highlight=False, soft_wrap=True)
    for line in summary.get("weaker_teachers", []):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


def trials_table(metric: str, mode: str, rows: list[dict], top: int = 10,
                  baselines: list[dict] | None = None, width: int = 100) -> Table:
    """Baselines first, then the best `top` trials; layers as lists ("wav2vec2: 2,4,6"). Fits
    `width` columns (a 100-column terminal): parameter columns that would not fit are left out,
    and the caption says where they are."""
    from raykd.results import trial_table

    baselines = baselines or []
    headers, cells = trial_table(metric, mode, baselines, rows, top)
    # One teacher's layers stay on one line ("wav2vec2: 1,2,4,6,12;"), the rest may wrap.
    layers_width = min(32, max((len(part) + 1 for row in cells for part in row[4].split("; ")), default=6))
    for n in range(len(headers), 4, -1):  # drop parameter columns from the right until it fits
        table = build_trials_table(metric, mode, len(rows), top, len(baselines), headers[:n], [r[:n] for r in cells],
                       layers_width)
        if fits(table, width):
            break
    if n < len(headers):
        table.caption = f"{len(headers) - n} more parameter(s): `raykd report` or trials.json"
    return table


def fits(table: Table, width: int) -> bool:
    """Rendered `width` wide, does the table lose nothing (wrapped, not cropped or cut with '…')?"""
    def chars(w: int) -> list[str]:
        c = Console(width=w, record=True, file=open(os.devnull, "w"))
        c.print(table)
        # box-drawing rules span the table's width: only the text counts
        return sorted(ch for ch in c.export_text() if not ch.isspace() and not "\u2500" <= ch <= "\u257f")

    return chars(width) == chars(10_000)


def build_trials_table(metric: str, mode: str, n_rows: int, top: int, n_baselines: int, headers: list[str],
           cells: list[list[str]], layers_width: int) -> Table:
    arrow = "higher" if mode == "max" else "lower"
    table = Table(title=f"trials (best {min(top, n_rows)} of {n_rows} by {metric}, {arrow} is better"
                        + (f"; {n_baselines} baseline runs first" if n_baselines else "") + ")",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, h in enumerate(headers):
        # parameter names wrap between words (feature / alignment / weight): as narrow as a value
        narrow = max(6, *(len(w) for w in h.split("_")), *(len(r[i]) for r in cells)) if i > 4 else None
        table.add_column(h.replace("_", " ") if i > 4 else h, justify="left" if i in (0, 1, 4) else "right",
                         no_wrap=i in (0, 1, 2, 3), overflow="fold", min_width=layers_width if i == 4 else None,
                         max_width=narrow)
    for j, row in enumerate(cells):
        table.add_row(*row, end_section=j == n_baselines - 1)
    return table


def events_table(rows: list[tuple[str, float, float]], title: str) -> None:
    table = Table(title=title)
    for c in ("file", "time (s)", "score"):
        table.add_column(c, justify="left" if c == "file" else "right")
    for f, t, s in rows:
        table.add_row(escape(f), f"{t:.2f}", f"{s:.3f}")
    console.print(table)
