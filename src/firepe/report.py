"""``firepe report``: one self-contained HTML page (and a Markdown file beside it) of ``firepe synth`` results.

:func:`report` collects every ``results.json`` of ``firepe synth`` under a folder (recursively, linked
folders not followed, a linked ``results.json`` refused; ``firepe suite`` writes one per task) and
:func:`write_report` renders them. Per results file: the
accuracy table (mean ± std over seeds, **bold** highest mean, ``*`` best in every seed) and the paired
per-seed differences -- :func:`firepe.synth.format_synth`'s tables, recomputed from the per-run accuracies
(:func:`firepe.synth.aggregate`) and rendered as HTML tables --, every plot synth wrote beside it
(``accuracy.png``, the recall heat maps of its encodings, any other ``*.png``), the settings and the wall
time. The grid "how far past the training length each encoding keeps >= 90%" (:func:`reach`) comes first, as
the overview.

The HTML embeds its images as base64 ``data:`` URIs and its CSS inline; it loads nothing and runs no script.
Every string taken from the results is escaped (:func:`html.escape`; the page is a :class:`string.Template`).
The Markdown references the images as relative paths. Everything is read and checked first (one
``ValueError`` naming the file: not JSON, truncated, wrong schema, not a PNG); only then are both files
written, each atomically (:func:`firepe.runs.write_text`).
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from .limits import MAX_LENGTH
from .runs import read_json, refuse_link, write_text
from .seeds import md_cell
from .synth import HEAT_MAPS, aggregate, format_synth, heat_map_name
from .tasks.synthetic import TASK_OPTIONS

__all__ = ["report", "write_report", "find_results", "load_results", "reach", "train_level", "THRESHOLD"]

#: the accuracy (%) an encoding must keep at a level and every smaller one (:func:`reach`)
THRESHOLD = 90.0
PNG = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; margin: 0;
       background: #fafbfc; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 10px 0 18px; background: #fff; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; } td:first-child, th:first-child { text-align: left; }
td.ok { background: #dff3e4; } td.no { color: #8a949e; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; overflow-wrap: anywhere; }
figure { display: inline-block; margin: 8px 12px 8px 0; vertical-align: top; max-width: 500px; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; background: #fff; }
figcaption, .meta { color: #57606a; font-size: 0.9em; }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
</head>
<body>
<main>
<h1>$title</h1>
<p class="meta">$meta</p>
<ul>$contents</ul>
<h2 id="grid">How far past the training length each encoding keeps &ge; $threshold%</h2>
<p>$rule</p>
$grid
$sections
</main>
</body>
</html>
""")

RULE = ("The largest scored level, as a multiple of the training level, at which the mean accuracy over seeds is "
        ">= {t:g}% and also at every smaller scored level; - when that does not reach 1x. In brackets: the seeds in "
        "which the same holds at that level, of all seeds; n/a: the encoding was not trained on that task.")


def find_results(root: str | Path) -> list[Path]:
    """Every ``results.json`` under ``root`` (``root`` included), sorted, without following linked folders; a
    linked ``results.json`` (it may point outside ``root``) is refused."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root} does not exist.")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass the folder of firepe synth or firepe suite results.")
    found = [Path(d) / "results.json" for d, _, files in os.walk(root) if "results.json" in files]
    if not found:
        raise ValueError(f"no results.json under {root}; run firepe synth or firepe suite first.")
    for p in found:  # a linked results.json may point outside root: refused, never read
        refuse_link(p)
    return sorted(found)


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is not a results.json of firepe synth: {what}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_results(path: str | Path) -> dict[str, Any]:
    """The summary of one ``results.json`` of ``firepe synth``, checked (unknown keys are ignored), its
    ``table`` recomputed from the per-run accuracies; ``ValueError`` naming the file otherwise."""
    path = Path(path)
    s = read_json(path)  # names the file when it is not JSON or truncated
    if not isinstance(s, dict):
        raise _bad(path, "not a JSON object")
    if not isinstance(s.get("task"), dict) or not isinstance(s["task"].get("task"), str):
        raise _bad(path, "no 'task' object with a task name")
    checks = {"level_name": lambda v: isinstance(v, str), "train_len": lambda v: _is_int(v) and 1 <= v <= MAX_LENGTH,
              "levels": lambda v: isinstance(v, list) and v and all(_is_int(x) and 1 <= x <= MAX_LENGTH for x in v)
              and len(set(v)) == len(v),
              "seeds": lambda v: isinstance(v, list) and v and all(_is_int(x) for x in v) and len(set(v)) == len(v),
              "runs": lambda v: isinstance(v, list) and v and all(isinstance(r, dict) for r in v),
              "steps": lambda v: _is_int(v), "model": lambda v: isinstance(v, dict),
              "wall_seconds": lambda v: _is_num(v) and v >= 0}
    for key, ok in checks.items():
        if key not in s:
            raise _bad(path, f"no '{key}'")
        if not ok(s[key]):
            raise _bad(path, f"'{key}' has the wrong type or value ({str(s[key])[:60]})")
    if s["level_name"] == "digits" and not (_is_int(s["task"].get("digits")) and 1 <= s["task"]["digits"] <= 4096):
        raise _bad(path, "a digits task without task.digits, an integer in [1, 4096]")
    have = set()
    for i, r in enumerate(s["runs"]):
        if not isinstance(r.get("label"), str) or not _is_int(r.get("seed")) or not isinstance(r.get("results"), list):
            raise _bad(path, f"runs[{i}] has no label, seed or results list")
        for j, x in enumerate(r["results"]):
            if not isinstance(x, dict) or not _is_int(x.get("level")) or not _is_num(x.get("accuracy")) \
                    or not 0 <= x["accuracy"] <= 100:
                raise _bad(path, f"runs[{i}].results[{j}] has no level or no accuracy in [0, 100]")
            if (r["label"], r["seed"], x["level"]) in have:  # two accuracies of one cell: neither is the result
                raise _bad(path, f"runs has {r['label']} at seed {r['seed']}, level {x['level']} twice")
            have.add((r["label"], r["seed"], x["level"]))
    for lab in dict.fromkeys(r["label"] for r in s["runs"]):
        for seed in s["seeds"]:
            for lv in s["levels"]:
                if (lab, seed, lv) not in have:
                    raise _bad(path, f"no accuracy of {lab} at seed {seed}, level {lv}")
    return {**s, "table": aggregate(s)}


def train_level(summary: dict[str, Any]) -> int:
    """The level trained on: the training length, or for addition (levels in digits) ``--digits``."""
    return summary["task"]["digits"] if summary["level_name"] == "digits" else summary["train_len"]


def reach(summary: dict[str, Any], threshold: float = THRESHOLD) -> dict[str, tuple[float | None, int, int]]:
    """Per encoding: ``(multiple, seeds, of)``. ``multiple`` is the largest scored level over the training level
    such that the mean accuracy over seeds is >= ``threshold`` there and at every smaller scored level (None
    when that level is below 1x or there is none); ``seeds`` counts the seeds in which every one of those
    levels is >= ``threshold`` on its own."""
    train, levels, n = train_level(summary), sorted(summary["levels"]), len(summary["seeds"])
    out = {}
    for lab, by in summary["table"]["cells"].items():
        kept = []
        for lv in levels:
            if by[str(lv)]["mean"] < threshold:
                break
            kept.append(lv)
        if not kept or kept[-1] < train:
            out[lab] = (None, 0, n)
            continue
        seeds = sum(all(by[str(lv)]["per_seed"][i] >= threshold for lv in kept) for i in range(n))
        out[lab] = (kept[-1] / train, seeds, n)
    return out


def _reach_text(r: tuple[float | None, int, int] | None) -> str:
    if r is None:
        return "n/a"
    return "-" if r[0] is None else f"{r[0]:g}x ({r[1]}/{r[2]})"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _settings(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows: the task's own options, training length, steps, model, seeds, wall time."""
    t = summary["task"]
    opts = ", ".join(f"{k}={v}" for k, v in t.items()  # None: an option left to the model (--attn-std, --embed-std)
                     if k != "task" and v is not None and (k not in TASK_OPTIONS or t["task"] in TASK_OPTIONS[k]))
    length = f"{summary['train_len']} tokens"
    if summary["level_name"] != "length":
        length += f" ({train_level(summary)} {summary['level_name']})"
    rows = [("task", f"{t['task']} ({opts})" if opts else t["task"]), ("training length", length),
            ("steps", str(summary["steps"])),
            ("model", ", ".join(f"{k}={v}" for k, v in summary["model"].items() if k != "vocab_size")),
            ("seeds", ", ".join(str(x) for x in summary["seeds"]))]
    if "examples" in summary:
        rows.append(("answers scored per level", str(summary["examples"])))
    if summary.get("random_positions") is not None:
        rows.append(("random positions", str(summary["random_positions"])))
    rows.append(("wall time of the synth call", _duration(summary["wall_seconds"])))
    return rows


def _images(folder: Path, labels: list[str]) -> list[Path]:
    """The PNG files synth wrote beside results.json: ``accuracy.png`` first, then the others by name; a heat
    map (recall's, the needles' by depth) of an encoding that is not in ``labels`` (an earlier synth's, in the
    same folder) is left out."""
    mine = {heat_map_name(lab, kind) for lab in labels for kind in HEAT_MAPS}
    return sorted((p for p in folder.glob("*.png") if p.is_file() and not p.is_symlink()
                   and (not p.name.startswith(tuple(f"{k}_" for k in HEAT_MAPS)) or p.name in mine)),
                  key=lambda p: (p.name != "accuracy.png", p.name))


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` (:func:`~firepe.seeds.md_cell`) is a ``|`` inside a cell."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _md_to_html(text: str) -> str:
    """:func:`format_synth`'s Markdown (pipe tables and paragraphs) as HTML, every cell escaped."""
    parts = []
    for block in text.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if lines and all(x.lstrip().startswith("|") for x in lines):
            # the first column holds labels: shown as written (a label "**x**" is not bold, i.e. not "best")
            head = "".join(f"<th>{html.escape(c) if i == 0 else _inline(c)}</th>"
                           for i, c in enumerate(_cells(lines[0])))
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c) if i == 0 else _inline(c)}</td>"
                                            for i, c in enumerate(_cells(x))) + "</tr>\n" for x in lines[2:])
            parts.append(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>")
        elif lines:
            parts.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(parts)


def _name(path: Path, root: Path | None) -> str:
    """How a results file is named: its folder relative to ``root``."""
    folder = path.parent
    if root is not None:
        rel = os.path.relpath(folder, root)
        if rel != ".":
            return rel.replace(os.sep, "/")
    return folder.resolve().name or str(folder)


def _heading(section: dict[str, Any]) -> str:
    task = section["summary"]["task"]["task"]
    return task if section["name"] == task else f"{section['name']} ({task})"


def _grid(sections: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    labels = list(dict.fromkeys(lab for s in sections for lab in s["reach"]))
    names = [s["name"] for s in sections]
    cells = {(lab, s["name"]): _reach_text(s["reach"].get(lab)) for s in sections for lab in labels}
    return labels, names, cells


def render_html(sections: list[dict[str, Any]], title: str) -> str:
    """The page: contents, one section per results file, the grid."""
    e = html.escape
    contents, body = ['<li><a href="#grid">summary grid</a></li>'], []
    for i, s in enumerate(sections):
        sm = s["summary"]
        contents.append(f'<li><a href="#task-{i}">{e(s["name"])}</a> ({e(sm["task"]["task"])})</li>')
        settings = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in s["settings"])
        figs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
                       f'alt="{e(p.name)}"><figcaption>{e(p.name)}</figcaption></figure>' for p, data in s["images"])
        body.append(f'<section id="task-{i}">\n<h2>{e(_heading(s))}</h2>\n'
                    f'<p class="meta">from {e(str(s["path"]))}</p>\n<dl class="settings">{settings}</dl>\n'
                    f'<h3>Accuracy (%) by {e(sm["level_name"])}</h3>\n{_md_to_html(s["tables"])}\n'
                    f'{figs or "<p>(no plots beside results.json)</p>"}\n</section>')
    labels, names, cells = _grid(sections)
    rows = "".join(f"<tr><td>{e(lab)}</td>" + "".join(
        f'<td class="{"ok" if cells[lab, n][0].isdigit() else "no"}">{e(cells[lab, n])}</td>' for n in names)
        + "</tr>\n" for lab in labels)
    grid = (f'<table class="grid">\n<thead><tr><th>encoding</th>{"".join(f"<th>{e(n)}</th>" for n in names)}'
            f"</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>")
    n = len(sections)
    return PAGE.substitute(title=e(title), css=CSS, meta=f"{n} result file{'s' * (n != 1)} of firepe synth",
                           contents="".join(contents), sections="\n".join(body), threshold=f"{THRESHOLD:g}",
                           rule=e(RULE.format(t=THRESHOLD)), grid=grid)


def render_markdown(sections: list[dict[str, Any]], title: str, md_path: Path) -> str:
    """The same content as Markdown; images as paths relative to ``md_path``'s folder."""
    labels, names, cells = _grid(sections)
    out = [f"# {title}", "", f"## How far past the training length each encoding keeps >= {THRESHOLD:g}%", "",
           RULE.format(t=THRESHOLD), "", "| encoding | " + " | ".join(md_cell(n) for n in names) + " |",
           "|---" * (len(names) + 1) + "|"]
    out += ["| " + md_cell(lab) + " | " + " | ".join(cells[lab, n] for n in names) + " |" for lab in labels]
    for s in sections:
        out += ["", f"## {_heading(s)}", "", f"From `{s['path']}`.", ""]
        out += [f"- **{k}**: {v}" for k, v in s["settings"]] + ["", s["tables"]]
        for p, _ in s["images"]:
            rel = os.path.relpath(p.resolve(), md_path.parent.resolve()).replace(os.sep, "/")
            out += ["", f"![{p.name}]({quote(rel)})"]
    return "\n".join(out) + "\n"


def _check_out(out: Path) -> Path:
    if not str(out).strip():
        raise ValueError("--out is empty; pass a file name like report.html.")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out} must name an .html file (the Markdown is written beside it, .md).")
    if out.is_dir():
        raise ValueError(f"--out {out} is an existing folder; pass a file name like {out / 'report.html'}.")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: its folder {out.parent} does not exist.")
    refuse_link(out)  # both files checked before the first is written
    refuse_link(out.with_suffix(".md"))
    return out


def write_report(paths: list[Path], out: str | Path, root: str | Path | None = None,
                 title: str = "firepe synth report") -> tuple[Path, Path]:
    """Read and check every results file of ``paths`` and its plots, then write ``out`` (HTML) and the Markdown
    beside it (``out`` with ``.md``). Sections are named by their folder relative to ``root``."""
    out = _check_out(Path(out))
    md = out.with_suffix(".md")
    root = Path(root) if root is not None else None
    sections = []
    for p in paths:
        p = Path(p)
        summary = load_results(p)
        images = []
        for img in _images(p.parent, list(summary["table"]["cells"])):
            data = img.read_bytes()
            if not data.startswith(PNG):
                raise ValueError(f"{img} is not a PNG image; the file is damaged (remove it or run synth again).")
            images.append((img, data))
        sections.append({"path": p, "name": _name(p, root), "summary": summary, "settings": _settings(summary),
                         "tables": format_synth(summary), "images": images, "reach": reach(summary)})
    names = [s["name"] for s in sections]
    for s in sections:  # a results.json at root and a folder of root's name: the grid's columns must differ
        if names.count(s["name"]) > 1:
            s["name"] = str(s["path"].parent)
    page, text = render_html(sections, title), render_markdown(sections, title, md)
    write_text(md, text)
    write_text(out, page)
    return out, md


def report(folder: str | Path, out: str | Path | None = None) -> tuple[Path, Path]:
    """``firepe report DIR [--out FILE]``: :func:`write_report` of every results.json under ``folder``
    (default ``out``: ``folder/report.html``); returns the HTML and Markdown paths."""
    if out is not None:
        _check_out(Path(out))  # before reading anything
    paths = find_results(folder)
    return write_report(paths, Path(out) if out is not None else Path(folder) / "report.html", root=folder)
