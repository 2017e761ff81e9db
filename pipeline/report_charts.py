"""The HTML report's charts: matplotlib figures serialised as SVG to inline in the page.

pyplot is never imported: each chart is a bare `Figure` saved by the SVG backend, so nothing here
touches the process-wide backend or pyplot's figure list, and a chart can be drawn from any thread.
Text stays text (`svg.fonttype: none`): a page of a dozen charts stays in the tens of kB.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.figure import Figure

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "edgepipe",  # fixed: the same report renders to the same bytes
    "text.parse_math": False,  # a class folder named "$x$" is a name, not TeX
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # one name, not matplotlib's list of ten, in every <text>
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
FLOAT_STYLE = {"marker": "o", "color": "#1f77b4"}
INT_STYLE = {"marker": "^", "color": "#d62728"}
MANY_CLASSES = 20  # above: no counts in the confusion cells (unreadable)
NO_CLASS_NAMES = 60  # above: no class names on the confusion axes either


def _svg(fig: Figure, prefix: str, label: str) -> str:
    """The figure as an <svg> element for an HTML page. matplotlib names its elements figure_1,
    axes_1, ... in every file: inlined side by side those ids would repeat, so each chart's ids
    (and the references to them) get the chart's own prefix."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE: not allowed inside HTML
    svg = re.sub(r'\bid="', f'id="{prefix}-', svg)
    svg = re.sub(r'(xlink:href="#|url\(#)', rf"\g<1>{prefix}-", svg)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return svg.replace("<svg ", f'<svg class="chart" role="img" aria-label="{label}" ', 1)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


class Point(NamedTuple):
    name: str
    latency_ms: float  # batch-1 p50
    accuracy: float
    int8: bool  # an int8 artifact (else a float one: fp32 / fp16)
    proxy: bool  # measured on a stand-in for the real backend


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both axes (lower latency, higher accuracy), by latency.
    A point equal to another on both axes is not beaten by it: both stay."""
    def beaten(p: Point) -> bool:
        return any(q.latency_ms <= p.latency_ms and q.accuracy >= p.accuracy
                   and (q.latency_ms < p.latency_ms or q.accuracy > p.accuracy) for q in points)

    return sorted((p for p in points if not beaten(p)), key=lambda p: (p.latency_ms, -p.accuracy))


def tradeoff_svg(points: Sequence[Point], front: Sequence[Point]) -> str:
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.0, 4.0))
        ax = fig.add_subplot()
        for int8, style, label in ((False, FLOAT_STYLE, "float (fp32 / fp16)"), (True, INT_STYLE, "int8")):
            for proxy in (False, True):
                group = [p for p in points if p.int8 == int8 and p.proxy == proxy]
                if group:
                    ax.scatter([p.latency_ms for p in group], [p.accuracy * 100 for p in group], s=46, zorder=3,
                               marker=style["marker"], edgecolors=style["color"], linewidths=1.5,
                               facecolors="none" if proxy else style["color"],
                               label=label + (", proxy (stand-in backend)" if proxy else ""))
        if front:
            # the accuracy reachable within a latency budget: flat until the next front point
            ax.plot([p.latency_ms for p in front], [p.accuracy * 100 for p in front], drawstyle="steps-post",
                    color="#555555", linestyle="--", linewidth=1, zorder=2,
                    label="Pareto front")
        ax.margins(x=0.12, y=0.12)
        _label_points(ax, fig, points)
        ax.set_xlabel("latency p50, batch 1 (ms) — lower is better")
        ax.set_ylabel("test accuracy (%) — higher is better")
        ax.legend(loc="best", fontsize=8)
        return _svg(fig, "tradeoff", "accuracy against latency, one point per artifact")


def _label_points(ax, fig: Figure, points: Sequence[Point]) -> None:
    """Each point's name beside it; a label that would overlap one already placed moves up or
    down a line (artifacts of one backend often sit within a fraction of a ms of each other)."""
    fig.draw_without_rendering()  # settles the axis limits the data -> pixel transform uses
    to_pt = 72 / fig.dpi
    placed: list[tuple[float, float, float]] = []  # x0, x1, y of each label, in points
    line = 11.0
    for p in sorted(points, key=lambda p: (p.latency_ms, -p.accuracy)):
        x, y = ax.transData.transform((p.latency_ms, p.accuracy * 100)) * to_pt
        x0, x1 = x + 6, x + 6 + 5.3 * len(p.name)
        for shift in (0, 1, -1, 2, -2, 3, -3):
            dy = shift * line
            if not any(x0 < b1 and b0 < x1 and abs(y + dy - by) < line for b0, b1, by in placed):
                break
        placed.append((x0, x1, y + dy))
        # just above the point: the front's step line runs level to the right of it
        ax.annotate(p.name, (p.latency_ms, p.accuracy * 100), xytext=(5, dy + 2), textcoords="offset points",
                    va="bottom", fontsize=8)


def confusion_svg(matrix: list[list[int]], classes: Sequence[str], key: str, name: str) -> str:
    """Counts [true][predicted]; the colour is the share of the true class's images, so a rare
    class's errors show as clearly as a common one's."""
    m = np.asarray(matrix, dtype=float)
    n = len(classes)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    side = min(10.0, max(3.2, 0.42 * n + 1.8))
    with matplotlib.rc_context({**_RC, "axes.grid": False, "font.size": 9 if n <= MANY_CLASSES else 6}):
        fig = Figure(figsize=(side, side))
        ax = fig.add_subplot()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if n <= MANY_CLASSES:
            for (i, j), count in np.ndenumerate(m):
                ax.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.55 else "black")
        if n <= NO_CLASS_NAMES:
            names = [_short(c) for c in classes]
            ax.set_xticks(range(n), names, rotation=45 if n > 3 or max(map(len, names)) > 10 else 0, ha="right")
            ax.set_yticks(range(n), names)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        return _svg(fig, f"confusion-{key}", f"confusion matrix of {name}")


def training_svg(curve: Sequence[dict], best_epoch: int | None) -> str:
    """Train loss and val accuracy per epoch, warm-up (backbone frozen) then the full fine-tune, on
    one x axis; the best epoch (0: the warm-up's best state was kept) starred."""
    phases = (("warmup", "warm-up (backbone frozen)", "#ff7f0e", "s"),
              ("finetune", "fine-tune (all layers)", "#1f77b4", "o"))
    xs = list(range(1, len(curve) + 1))
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.0, 4.2))
        loss_ax, acc_ax = fig.subplots(2, 1, sharex=True)
        for phase, label, color, marker in phases:
            at = [i for i, c in enumerate(curve) if c["phase"] == phase]
            if at:
                loss_ax.plot([xs[i] for i in at], [curve[i]["train_loss"] for i in at], color=color, marker=marker,
                             markersize=4, label=label)
                acc_ax.plot([xs[i] for i in at], [curve[i]["val_accuracy"] * 100 for i in at], color=color,
                            marker=marker, markersize=4, label=label)
        best = _best_index(curve, best_epoch)
        if best is not None:
            acc_ax.plot([xs[best]], [curve[best]["val_accuracy"] * 100], marker="*", markersize=14, color="#2ca02c",
                        linestyle="none", zorder=4, label=f"best: val {curve[best]['val_accuracy']:.2%}")
        loss_ax.set_ylabel("train loss")
        acc_ax.set_ylabel("val accuracy (%)")
        acc_ax.set_xlabel("epoch (w: warm-up)")
        step = max(1, -(-len(xs) // 12))  # at most 12 labels: a 40-epoch curve's labels would overlap
        ticks = [("w" if c["phase"] == "warmup" else "") + str(c["epoch"]) for c in curve]
        acc_ax.set_xticks(xs[::step], ticks[::step])
        acc_ax.legend(loc="lower right", fontsize=8)
        return _svg(fig, "training", "training curve: train loss and validation accuracy per epoch")


def _best_index(curve: Sequence[dict], best_epoch: int | None) -> int | None:
    if best_epoch is None:
        return None
    if best_epoch > 0:
        return next((i for i, c in enumerate(curve) if c["phase"] == "finetune" and c["epoch"] == best_epoch), None)
    warm = [i for i, c in enumerate(curve) if c["phase"] == "warmup"]  # the head with the best val was kept
    return max(warm, key=lambda i: curve[i]["val_accuracy"]) if warm else None


def latency_svg(rows: Sequence[dict]) -> str:
    """p50 / p95 / p99 and the mean of each artifact, one line each: verify keeps these percentiles,
    not the raw timings, so a range with dots rather than a histogram."""
    names = [_short(r["name"], 28) for r in rows]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.0, 0.34 * len(rows) + 1.1))
        ax = fig.add_subplot()
        ys = list(range(len(rows)))[::-1]  # first row on top
        lat = [r["latency_ms"] for r in rows]
        ax.hlines(ys, [v["p50"] for v in lat], [v["p99"] for v in lat], color="#999999", linewidth=2)
        for key, style in (("p50", {"marker": "o", "color": "#1f77b4"}), ("p95", {"marker": "s", "color": "#ff7f0e"}),
                           ("p99", {"marker": "D", "color": "#d62728"}), ("mean", {"marker": "x", "color": "black"})):
            ax.scatter([v[key] for v in lat], ys, s=28, zorder=3, label=key, **style)
        ax.set_yticks(ys, names)
        ax.set_xlim(left=0)
        ax.set_xlabel("latency, batch 1 (ms)")
        # above the plot, not in it: inside, it hides whichever row's dots fall in its corner
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=8, ncols=4, frameon=False)
        return _svg(fig, "latency", "latency percentiles per artifact")
