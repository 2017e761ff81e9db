"""`edgepipe diff OLD NEW`: what changed between two releases, as markdown, HTML or JSON, and
whether NEW regressed (exit 3 naming the artifact).

A regression: an artifact that ran in OLD and fails or is gone in NEW, or whose accuracy dropped by
more than the limit on the compared images; with --max-latency-increase, a p50 latency that grew by
more than that fraction (measured on the same CPU only: CPU timings are noisy and machines differ).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepipe.pipeline.compare import ArtifactChange, Comparison

CHANGED_IMAGES_SHOWN = 50  # markdown and HTML list this many; --json has them all


@dataclass(frozen=True)
class Regression:
    artifact: str
    problem: str  # one line, e.g. "accuracy -2.00 pt (limit 1.00 pt)"


def regressions(c: Comparison, max_accuracy_drop: float = 0.01,
                max_latency_increase: float | None = None) -> list[Regression]:
    found = []
    for a in c.artifacts:
        if a.status == "removed":
            found.append(Regression(a.name, "ran in OLD, not in NEW (renamed, or its target left the config)"))
        elif a.status == "broken":
            found.append(Regression(a.name, f"ran in OLD; in NEW {a.reason}"))
        elif a.status == "compared":
            d = a.accuracy_delta
            if d is not None and -d > max_accuracy_drop + 1e-12:
                found.append(Regression(a.name, f"accuracy {d * 100:+.2f} pt on {c.compared_on} "
                                                f"(limit -{max_accuracy_drop * 100:.2f} pt)"))
            if (max_latency_increase is not None and c.same_machine and a.latency_ratio is not None
                    and a.latency_ratio > 1 + max_latency_increase):
                found.append(Regression(a.name, f"p50 latency x{a.latency_ratio:.2f} (limit x{1 + max_latency_increase:.2f})"))
    return found


def verdict(c: Comparison, found: list[Regression]) -> str:
    if found:
        return "REGRESSION: " + "; ".join(f"{r.artifact}: {r.problem}" for r in found)
    if c.unchanged():
        return "no change"
    return "changed, no regression beyond the limits"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _pt(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.2f}"


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"x{v:.2f}"


def artifact_cells(a: ArtifactChange) -> list[str]:
    """One table row per artifact, shared by the markdown and the HTML."""
    if a.status != "compared":
        return [a.name, a.status + (f" ({a.reason})" if a.reason else ""), "", "", "", "", "", ""]
    return [a.name, f"{_pct(a.old_accuracy)} → {_pct(a.new_accuracy)}", _pt(a.accuracy_delta),
            f"{_pct(a.old_agreement)} → {_pct(a.new_agreement)}", _ratio(a.latency_ratio), _ratio(a.size_ratio),
            str(a.predictions_changed), a.reason or ""]


ARTIFACT_HEADERS = ["artifact", "accuracy", "Δ pt", "agreement with float", "p50 latency", "size",
                    "predictions changed", "note"]
IMAGE_HEADERS = ["image", "label", "artifact", "OLD → NEW", "confidence OLD → NEW", "effect"]


def image_cells(i) -> list[str]:
    conf = "n/a" if i.old_confidence is None or i.new_confidence is None else f"{i.old_confidence:.2f} → {i.new_confidence:.2f}"
    return [i.id, i.label, i.artifact, f"{i.old} → {i.new}", conf, i.effect]


def recall_table(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of per-class recall change in pt, artifacts by classes (same split only)."""
    compared = [a for a in c.artifacts if a.status == "compared" and a.recall_delta]
    classes = list(compared[0].recall_delta) if compared else []
    return ["artifact", *classes], [[a.name, *(_pt(a.recall_delta.get(k)) for k in classes)] for a in compared]


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[cell.replace("|", "/") for cell in row] for row in rows]
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in esc]


def render_markdown(c: Comparison, found: list[Regression]) -> str:
    lines = ["# edgepipe diff", "", f"- OLD: {c.old}", f"- NEW: {c.new}", f"- compared on {c.compared_on}"]
    if not c.same_machine:
        lines.append("- latency measured on different machines: the ratios compare the machines too")
    lines += ["", _verdict_line(c, found), "", *_md_table(ARTIFACT_HEADERS, [artifact_cells(a) for a in c.artifacts])]
    headers, rows = recall_table(c)
    if rows:
        lines += ["", "Per-class recall, change in pt:", "", *_md_table(headers, rows)]
    if c.images:
        shown = c.images[:CHANGED_IMAGES_SHOWN]
        lines += ["", f"Test images whose prediction changed: {len(c.images)}"
                  + (f" (first {len(shown)}; --json lists all)" if len(shown) < len(c.images) else ""), "",
                  *_md_table(IMAGE_HEADERS, [image_cells(i) for i in shown])]
    return "\n".join(lines) + "\n"


def _verdict_line(c: Comparison, found: list[Regression]) -> str:
    return f"**{verdict(c, found)}**"


def render_html(c: Comparison, found: list[Regression]) -> str:
    try:
        from jinja2 import Environment, PackageLoader
    except ImportError:
        from edgepipe.core.errors import EdgepipeError

        raise EdgepipeError("--html needs jinja2, which comes with edgepipe's build tools",
                            "pip install 'edgepipe[build]' (or pip install jinja2)") from None
    # autoescape always: image ids, class and artifact names come from the user's folders
    env = Environment(loader=PackageLoader("edgepipe.pipeline", "templates"), autoescape=True)
    headers, rows = recall_table(c)
    return env.get_template("diff.html.j2").render(
        c=c, verdict=verdict(c, found), regressed=bool(found), artifact_headers=ARTIFACT_HEADERS,
        artifact_rows=[artifact_cells(a) for a in c.artifacts], recall_headers=headers, recall_rows=rows,
        image_headers=IMAGE_HEADERS, image_rows=[image_cells(i) for i in c.images[:CHANGED_IMAGES_SHOWN]],
        images_total=len(c.images))
