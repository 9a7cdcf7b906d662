"""One self-contained HTML report of a run, and the same tables as CSV beside it.

:func:`write_report` writes a single HTML file (inline CSS, every image embedded as a ``data:`` URI, no
JavaScript, nothing fetched) with these sections:

1. **Results**: model x task x modality subset, ``mean ± std`` over folds for each metric (the missing-modality
   stress test is the ``without <modality>`` rows), and the per-fold values; then the **missing-modality**
   table: each model's primary metric with all its modalities and with each one withheld.
2. **Kaplan-Meier**: per model and task, the out-of-fold risk groups pooled over folds, with the log-rank p;
   then the **heatmaps** (attention and contribution) of each fold's highest- and lowest-scored held-out
   patients, from the heatmap stage's folders (``heatmaps.csv``); the section says so when there is none.
3. **Training curves**: train and validation loss and the validation metric per epoch, per fold; then the
   **pretraining** curves (every loss term per epoch) of pretrained models, and **downstream tasks** (report
   generation scores, data-efficiency curves) where a run has them.
4. **Cohort QC**: slides, statuses and tiles per slide (``results/qc/slides.parquet``), and the segmentation
   QC thumbnails (``results/segmentation/<slide>.qc.png``) scaled down. A per-slide table never has more than
   ``max_slide_rows`` rows: a bigger cohort shows its summaries and only the slides not tiled, excluded or
   flagged, with their count and the CSV that has every slide.
5. **Provenance**: every input store or file, the stage that made it, when, its sha256 now (per-slide feature
   stores: not re-hashed, one row per folder), and the code version recorded in it.
6. **Cost**: wall time and peak memory per Snakemake rule (``results/benchmarks/**/*.tsv``: seconds ``s`` and
   ``max_rss`` in MB), and per training fold.

Plots are PNGs drawn with matplotlib (Agg); without matplotlib the report says so in place of each plot.
CSV files: ``summary.csv``, ``summary_wide.csv``, ``folds.csv``, ``predictions.csv``, ``km_curves.csv``,
``logrank.csv``, ``training_history.csv``, ``training.csv``, ``qc_slides.csv``, ``provenance.csv``,
``cost_by_rule.csv``, ``cost_jobs.csv`` (those with content), in ``csv_dir`` (default: the HTML's folder).
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import html
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathmm_pipeline.core.atomic import write_text_atomic
from pathmm_pipeline.evaluation.run import ResultsTables

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:1.5em;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:.6em}.thumb{text-align:center;font-size:.75em;width:170px}
.thumb img{max-width:160px;max-height:160px;border:1px solid #ccc}
.plot img{max-width:100%}.note{background:#fff8e1;border-left:4px solid #f0c000;padding:.4em .8em;font-size:.9em}
code{font-size:.85em}details{margin:.5em 0}nav a{margin-right:1em}
"""

SECTIONS = (("protocol", "Protocol"), ("results", "Results"), ("types", "Per cancer type"),
            ("stress", "Missing modalities"), ("km", "Kaplan-Meier"), ("heatmaps", "Heatmaps"),
            ("training", "Training curves"), ("pretraining", "Pretraining"), ("downstream", "Downstream tasks"),
            ("qc", "Cohort QC"), ("provenance", "Provenance"), ("cost", "Cost"))


def pretraining_plot(history: pd.DataFrame, title: str) -> str | None:
    """Every loss term of a pretraining run per epoch, one line per term, folds averaged."""
    plt = _matplotlib()
    if plt is None or history.empty:
        return None
    terms = [c for c in history.columns if c not in ("model", "fold", "epoch", "lr", "seconds")]
    mean = history.groupby("epoch")[terms].mean()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for term in terms:
        ax.plot(mean.index, mean[term], label=term, lw=2 if term == "loss" else 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over folds)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------- plotting
def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        return plt
    except ImportError:  # pragma: no cover - matplotlib is a lifelines dependency
        return None


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f'<p class="note">{html.escape(alt)}: plot unavailable (matplotlib is not installed)</p>'
    return f'<div class="plot"><img src="{uri}" alt="{html.escape(alt)}"></div>'


def km_plot(curves: Any, title: str) -> str | None:
    """A PNG data URI of the Kaplan-Meier curves (with CIs) of a :class:`RiskGroupCurves`."""
    plt = _matplotlib()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    colors = plt.cm.coolwarm(np.linspace(0.05, 0.95, len(curves.curves)))
    for c, color in zip(curves.curves, colors):
        ax.step(c.times, c.survival, where="post", color=color, label=f"{c.label} (n={c.n}, events={c.n_events})")
        ax.fill_between(c.times, c.lower, c.upper, step="post", color=color, alpha=0.15)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_title(f"{title}\nlog-rank p = {curves.logrank.p_value:.3g}", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _png(fig)


def training_plot(history: pd.DataFrame, title: str, metric: str) -> str | None:
    """Loss (train solid, inner validation dashed) and the inner-validation metric per epoch, one colour per
    fold. The held-out patients are never part of it (under ``last`` only the training loss exists)."""
    plt = _matplotlib()
    if plt is None:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (fold, h) in enumerate(history.groupby("fold")):
        color = plt.cm.tab10(i % 10)
        a.plot(h.epoch, h.train_loss, color=color, label=f"fold {fold} train")
        if h.inner_val_loss.notna().any():
            a.plot(h.epoch, h.inner_val_loss, color=color, linestyle="--", label=f"fold {fold} inner val")
            b.plot(h.epoch, h.inner_val_metric, color=color, label=f"fold {fold}")
        if "best" in h and h.inner_val_metric.notna().any():
            best = h[h.best.astype(bool)]
            if len(best):
                last = best.iloc[-1]
                b.scatter([last.epoch], [last.inner_val_metric], color=color, marker="*", s=60, zorder=3)
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.set_title(f"{title}: loss", fontsize=10)
    b.set_xlabel("epoch")
    b.set_ylabel(f"inner-validation {metric}")
    b.set_title(f"{title}: inner-validation {metric} (* = kept epoch)", fontsize=10)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=7, ncol=2)
    return _png(fig)


def tiles_plot(qc: pd.DataFrame, max_bars: int = 60) -> str | None:
    """Tiles per slide: one bar per slide (red: not tiled) up to ``max_bars`` slides, else a histogram of the
    tiled slides' tile counts with the number not tiled in the title."""
    plt = _matplotlib()
    if plt is None or qc.empty:
        return None
    ok = qc.tiling_status.astype(str).eq("ok") if "tiling_status" in qc else pd.Series(True, index=qc.index)
    if len(qc) > max_bars:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(qc.n_tiles[ok], bins=50, color="#4a7ab5")
        ax.set_xlabel("tiles per slide")
        ax.set_ylabel("slides")
        ax.set_title(f"tiles per tiled slide ({int(ok.sum())} slides; {int((~ok).sum())} not tiled)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)
    frame = qc.assign(_ok=ok).sort_values("slide_id")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.18 * len(frame)), 3.2))
    ax.bar(range(len(frame)), frame.n_tiles, color=np.where(frame._ok, "#4a7ab5", "#c0504d"))
    ax.set_xticks(range(len(frame)))
    ax.set_xticklabels(frame.slide_id, rotation=90, fontsize=6)
    ax.set_ylabel("tiles")
    ax.set_title("tiles per slide (red: not tiled)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def thumbnail(path: str | os.PathLike[str], max_px: int = 160) -> str | None:
    """A scaled-down JPEG data URI of an image file (None if it cannot be read)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    scale = min(1.0, max_px / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii") if ok else None


# ------------------------------------------------------------------------------------------- tables
def _table(frame: pd.DataFrame, max_rows: int | None = None, digits: int = 4, full: str = "the CSV") -> str:
    """An HTML table of ``frame``; over ``max_rows`` rows only the first ones, with the count and ``full``,
    where every row is."""
    if frame is None or frame.empty:
        return '<p class="meta">(none)</p>'
    shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    out = ["<table><thead><tr>"]
    out += [f"<th>{html.escape(str(c))}</th>" for c in shown.columns]
    out.append("</tr></thead><tbody>")
    for row in shown.itertuples(index=False):
        out.append("<tr>")
        for value in row:
            if isinstance(value, (float, np.floating)):
                text = "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"
                out.append(f'<td class="num">{text}</td>')
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                out.append(f'<td class="num">{value}</td>')
            else:
                out.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(shown) < len(frame):
        out.append(f'<p class="meta">first {len(shown)} of {len(frame)} rows; all in {full}</p>')
    return "".join(out)


def read_benchmarks(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """Every Snakemake benchmark TSV under ``folder``: one row per job, with ``rule`` (the first path part
    below ``folder``, without ``.tsv``), ``job`` (the rest) and the benchmark columns (``s``, ``max_rss`` MB,
    ``cpu_time``, ...). Repeated measurements of one job are averaged. Read as plain text (a cohort has one
    file per slide job, hundreds of thousands)."""
    root = Path(folder)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        values = _benchmark_means(path)
        if values is None:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        rows.append({"rule": parts[0], "job": "/".join(parts[1:]) or parts[0], "file": str(path), **values})
    return pd.DataFrame(rows)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return np.nan


def _benchmark_means(path: Path) -> dict[str, float] | None:
    """Column -> mean over the file's measurements (non-numbers as NaN, ``h:m:s`` left out); None when the
    file cannot be read, has no ``s`` column or no measurement."""
    try:
        lines = [line.rstrip("\r") for line in path.read_text().split("\n") if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 2:
        return None
    header = lines[0].split("\t")
    if "s" not in header:
        return None
    records = [line.split("\t") for line in lines[1:]]
    if any(len(r) > len(header) for r in records):
        return None
    keep = [(i, name) for i, name in enumerate(header) if name != "h:m:s"]
    out = {}
    for i, name in keep:
        column = [_number(r[i]) if i < len(r) else np.nan for r in records]
        finite = [v for v in column if not np.isnan(v)]
        out[name] = float(sum(finite) / len(finite)) if finite else np.nan
    return out


def cost_by_rule(jobs: pd.DataFrame, training: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per rule: jobs, summed and largest wall seconds, peak ``max_rss`` (MB), summed CPU seconds; training
    folds as rules ``train:<model>/<task>``."""
    rows = []
    if jobs is not None and not jobs.empty:
        for rule, g in jobs.groupby("rule", sort=True):
            rows.append({"rule": rule, "jobs": int(len(g)), "wall_s_total": float(g.s.sum()),
                         "wall_s_max": float(g.s.max()),
                         "peak_max_rss_mb": float(g.max_rss.max()) if "max_rss" in g else np.nan,
                         "cpu_s_total": float(g.cpu_time.sum()) if "cpu_time" in g else np.nan})
    if training is not None and not training.empty:
        for (model, task), g in training.groupby(["model", "task"], sort=False):
            rows.append({"rule": f"train:{model}/{task}", "jobs": int(len(g)),
                         "wall_s_total": float(pd.to_numeric(g.seconds).sum()),
                         "wall_s_max": float(pd.to_numeric(g.seconds).max()),
                         "peak_max_rss_mb": float(pd.to_numeric(g.peak_rss_mb).max()), "cpu_s_total": np.nan})
    return pd.DataFrame(rows)


def provenance_table(inputs: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]],
                     verify: bool = False, not_hashed: Sequence[str] = ()) -> pd.DataFrame:
    """One row per input: label, path, kind, the stage recorded in its provenance, when, sha256 of its content
    now, and the code version (pathmm version, git commit, dirty flag, source hash) recorded with it.
    ``verify=True`` also re-hashes what each store recorded as its inputs (slow on real slides). Inputs whose
    label matches a pattern of ``not_hashed`` are not hashed: no ``sha256``, and the status says so."""
    from pathmm_pipeline.core.errors import ProvenanceError
    from pathmm_pipeline.core.provenance import hash_path, read_provenance, verify_provenance

    items = inputs.items() if isinstance(inputs, Mapping) else ((Path(p).name, p) for p in inputs)
    rows = []
    for label, path in items:
        path = Path(path)
        row: dict[str, Any] = {"input": label, "path": str(path)}
        if not path.exists():
            rows.append({**row, "status": "missing"})
            continue
        row["kind"] = "dir" if path.is_dir() else "file"
        hashed = not any(fnmatch.fnmatchcase(str(label), pattern) for pattern in not_hashed)
        row["sha256"] = hash_path(path) if hashed else None
        try:
            record = read_provenance(path)
            code = record.get("code", {})
            row.update(stage=record.get("stage"), created_utc=record.get("created_utc"),
                       code_version=code.get("pathmm"), git_commit=(code.get("git_commit") or "")[:12],
                       git_dirty=code.get("git_dirty"), source_sha256=(code.get("source_sha256") or "")[:16],
                       n_inputs=len(record.get("inputs", {})),
                       status="recorded" if hashed else "recorded; not re-hashed (pathmm audit re-hashes)")
            if verify:
                findings = verify_provenance(path)
                row["status"] = "verified" if not findings else f"{len(findings)} finding(s): {findings[0]}"
        except ProvenanceError as exc:
            row["status"] = f"no provenance ({exc})"
        rows.append(row)
    return pd.DataFrame(rows)


#: per-slide stores of a results tree: listed with their recorded provenance, not re-hashed by the report (a
#: cohort's features are terabytes; each checkpoint recorded their hashes when it trained, ``pathmm audit``
#: re-hashes them)
PER_SLIDE = ("features/*/*.zarr",)


def provenance_html(prov: pd.DataFrame, max_rows: int = 50) -> str:
    """The provenance table as the report shows it: the inputs of a folder holding more than ``max_rows`` of
    them (the per-slide stores) as one row with their count, stages, code versions and statuses."""
    if prov.empty or "input" not in prov:
        return _table(prov)
    folder = prov["input"].astype(str).map(lambda label: label.rsplit("/", 1)[0] + "/" if "/" in label else "")
    sizes = folder.map(folder.value_counts())
    big = (folder != "") & (sizes > max_rows)
    rows = []
    for name, group in prov[big].groupby(folder[big], sort=True):
        rows.append({"input": f"{name} ({len(group)} inputs)", "path": str(Path(str(group.path.iloc[0])).parent),
                     **{c: " | ".join(f"{k}: {v}" for k, v in group[c].fillna("-").astype(str).value_counts()
                                      .items()) for c in ("kind", "stage", "code_version", "git_commit", "status")
                        if c in group}})
    shown = pd.concat([prov[~big], pd.DataFrame(rows)], ignore_index=True)
    note = (f"<p class='meta'>Folders of more than {max_rows} inputs are one row each; every input is in "
            "<code>provenance.csv</code>.</p>" if rows else "")
    return _table(shown) + note


def collect_inputs(results_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The pipeline's stores under ``results_dir`` as report inputs: the cohort manifest, the QC summary,
    every feature store, the genomics and report stores, the cleaned reports table and any checkpoint."""
    root = Path(results_dir)
    found: dict[str, str] = {}
    patterns = ["cohort/manifest.parquet", "qc/slides.parquet", "features/*/*.zarr", "genomics/*.zarr",
                "reports/reports.parquet", "reports/embeddings.zarr", "training/**/checkpoint.pt"]
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if ".tmp-" in path.name:
                continue
            found[str(path.relative_to(root))] = str(path)
    return found


def quality_html(qc_frame: pd.DataFrame, max_rows: int = 200) -> str:
    """The quality-control decisions: the slides the rules excluded, each with its reason, and the tiles
    excluded per reason over the cohort."""
    if "qc_decision" not in qc_frame:
        return ""
    excluded = qc_frame[qc_frame.qc_decision.astype(str).eq("exclude")]
    n_tiles = int(qc_frame.get("tiles_excluded_by_qc", pd.Series(dtype=int)).sum())
    n_candidates = int(qc_frame.get("n_qc_candidates", pd.Series(dtype=int)).sum())
    text = (f"<p>Quality control (rules <code>qc.tile_rules</code> / <code>qc.slide_rules</code>): "
            f"{len(excluded)} slide(s) excluded from extraction and training; {n_tiles} of {n_candidates} "
            f"candidate tiles excluded.</p>")
    if len(excluded):
        text += _table(excluded[[c for c in ("slide_id", "reason", "tissue_area_mm2", "n_qc_candidates",
                                             "tile_qc_reasons") if c in excluded]],
                       max_rows=max_rows, full="<code>qc_slides.csv</code>")
    return text


def _not_ok(qc_frame: pd.DataFrame) -> pd.Series:
    """Slides not segmented, not tiled, or excluded by QC."""
    bad = pd.Series(False, index=qc_frame.index)
    for column, good in (("segmentation_status", "ok"), ("tiling_status", "ok"), ("qc_decision", "include")):
        if column in qc_frame:
            bad |= qc_frame[column].astype(str).ne(good)
    return bad


def slides_html(qc_frame: pd.DataFrame, max_rows: int = 200) -> str:
    """The per-slide QC table: every slide of a cohort of at most ``max_rows``; of a bigger one only the slides
    not segmented, not tiled or excluded (at most ``max_rows``), with the counts and where the full table is."""
    where = "<code>qc_slides.csv</code> (and <code>results/qc/slides.parquet</code>)"
    if len(qc_frame) <= max_rows:
        return "<details><summary>Per-slide table</summary>" + _table(qc_frame) + "</details>"
    flagged = qc_frame[_not_ok(qc_frame)]
    return (f"<h3>Slides not segmented, not tiled or excluded</h3><p>{len(flagged)} of {len(qc_frame)} slides; "
            f"every slide is in {where}.</p>" + _table(flagged, max_rows=max_rows, full=where))


def _qc_frame(qc: str | os.PathLike[str] | pd.DataFrame | None) -> pd.DataFrame:
    if qc is None:
        return pd.DataFrame()
    if isinstance(qc, pd.DataFrame):
        return qc.copy()
    path = Path(qc)
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def _thumbnail_paths(thumbnails: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
                     ) -> list[Path]:
    if thumbnails is None:
        return []
    if isinstance(thumbnails, (str, os.PathLike)):
        root = Path(thumbnails)
        return sorted(root.glob("*.qc.png")) if root.is_dir() else [root]
    return [Path(p) for p in thumbnails]


# ------------------------------------------------------------------------------------------- the report
def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def read_pretraining_logs(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """``pretrain_log.csv`` files (``.../<model>/fold_<k>/pretrain_log.csv``) as one table with ``model`` and
    ``fold`` columns."""
    frames = []
    for path in paths:
        path = Path(path)
        frame = pd.read_csv(path)
        frame.insert(0, "fold", int(path.parent.name.removeprefix("fold_")))
        frame.insert(0, "model", path.parent.parent.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_report(results: ResultsTables, out_html: str | os.PathLike[str], *,
                 qc: str | os.PathLike[str] | pd.DataFrame | None = None,
                 thumbnails: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                 benchmarks: str | os.PathLike[str] | None = None,
                 provenance: Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]] | None = None,
                 title: str = "pathmm run report", csv_dir: str | os.PathLike[str] | None = None,
                 verify_provenance: bool = False, max_thumbnails: int = 200, thumb_px: int = 160,
                 notes: Sequence[str] = (), pretraining: pd.DataFrame | None = None,
                 downstream: Mapping[str, pd.DataFrame] | None = None,
                 protocol: Mapping[str, Any] | None = None,
                 resolution: str | os.PathLike[str] | pd.DataFrame | None = None,
                 max_slide_rows: int = 200, heatmaps: pd.DataFrame | None = None) -> Path:
    """Write the HTML report at ``out_html`` and its tables as CSV (see the module docstring); returns the path.

    ``qc``: the QC summary (``results/qc/slides.parquet`` or a DataFrame); ``thumbnails``: the segmentation
    folder (its ``*.qc.png``) or image paths; ``benchmarks``: ``results/benchmarks``; ``provenance``: the
    inputs to list (label -> path, or paths; :func:`collect_inputs` finds a results folder's); ``pretraining``:
    the pretraining history (model, fold, epoch and one column per loss term; :func:`read_pretraining_logs`);
    ``downstream``: title -> table of downstream-task results (report generation, data efficiency, ...);
    ``protocol``: how the run was evaluated (:func:`protocol_html`: splits, inner validation, pretraining);
    ``resolution``: the cohort resolution table (``results/cohort/resolution.csv`` or a DataFrame);
    ``max_slide_rows``: the most rows of any per-slide table (the full tables are the CSVs); ``heatmaps``: one
    row per slide heatmap (:func:`pathmm_pipeline.interpret.stage.collect_heatmaps`: run, task, fold, patient,
    slide, why, score, png, contribution_png), shown scaled down per run."""
    from pathmm_pipeline.core.provenance import code_identity

    out_html = Path(out_html)
    csv_root = Path(csv_dir) if csv_dir is not None else out_html.parent
    qc_frame = _qc_frame(qc)
    jobs = read_benchmarks(benchmarks) if benchmarks is not None and Path(benchmarks).is_dir() else pd.DataFrame()
    cost = cost_by_rule(jobs, results.training)
    prov = (provenance_table(provenance, verify_provenance, not_hashed=PER_SLIDE) if provenance is not None
            else pd.DataFrame())

    # CSVs -----------------------------------------------------------------------------------------------
    tables = dict(results.tables())
    tables.update(qc_slides=qc_frame, provenance=prov, cost_by_rule=cost, cost_jobs=jobs)
    if heatmaps is not None:
        tables["heatmaps"] = heatmaps
    if pretraining is not None:
        tables["pretraining_history"] = pretraining
    for name, frame in (downstream or {}).items():
        tables[f"downstream_{_slug(name)}"] = frame
    written = {}
    for name, frame in tables.items():
        if frame is not None and not frame.empty:
            written[name] = write_text_atomic(csv_root / f"{name}.csv", frame.to_csv(index=False))

    code = code_identity()
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>written {now} by pathmm {html.escape(str(code.get('pathmm')))}, commit "
        f"<code>{html.escape(str(code.get('git_commit') or 'unknown'))}</code>"
        f"{' (uncommitted changes)' if code.get('git_dirty') else ''}; tables as CSV in "
        f"<code>{html.escape(str(csv_root))}</code></p>",
        "<nav>" + "".join(f"<a href='#{k}'>{v}</a>" for k, v in SECTIONS) + "</nav>",
    ]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]

    # 0. protocol ----------------------------------------------------------------------------------------
    parts.append("<h2 id='protocol'>Protocol</h2>")
    parts.append(protocol_html(results, protocol or {}))

    # 1. results -----------------------------------------------------------------------------------------
    parts.append("<h2 id='results'>Results</h2>")
    parts.append("<p>Mean ± sample standard deviation over folds, on each fold's held-out patients, all cancer "
                 "types pooled. <b>selection</b>: how the kept epoch was chosen (<code>last</code>: the last "
                 "epoch; <code>inner</code>: on an inner split of the training patients). <b>subset</b> "
                 "<code>all</code>: every modality the model reads; <code>withheld X</code>: X removed from every "
                 "held-out patient at inference; <code>missing X</code>: the held-out patients who really lack X; "
                 "<code>complete</code>: those with every modality the model reads. C-index: Harrell's; td_auc: "
                 "mean cumulative/dynamic AUC; ibs: integrated Brier score (lower is better); logrank_p: risk "
                 "groups cut at the training median risk.</p>")
    parts.append(_table(results.summary_wide()))
    patients = results.patients_table()
    if not patients.empty:
        parts.append("<h3>Patients per run</h3><p>Held-out patients evaluated and left out over all folds (a "
                     "model that requires a modality cannot take a patient who lacks it, e.g. a slide-less "
                     "patient for a WSI-only model), and patients trained on.</p>")
        parts.append(_table(patients))
    parts.append("<details><summary>Per-fold values (with bootstrap intervals for the C-index)</summary>")
    fold_cols = [c for c in ("model", "task", "selection", "fold", "subset", "cancer_type", "metric", "value",
                             "lower", "upper", "n_patients", "n_events", "n_left_out", "note")
                 if c in results.folds]
    parts.append(_table(results.folds[fold_cols] if fold_cols else results.folds, max_rows=500))
    parts.append("</details>")

    # 1a. per cancer type ---------------------------------------------------------------------------------
    parts.append("<h2 id='types'>Per cancer type</h2>")
    types = results.per_cancer_type()
    if not types.empty:
        parts.append("<p>Each run's primary metrics on each cancer type's held-out patients beside the pooled "
                     "value (<code>all</code>): mean ± std over folds, the mean of the per-fold bootstrap 95% "
                     "interval bounds, and the patients and events summed over folds.</p>")
        parts.append(_table(types.drop(columns=["mean", "std"])))
    else:
        parts.append("<p class='meta'>(one cancer type)</p>")

    # 1b. missing modalities -----------------------------------------------------------------------------
    parts.append("<h2 id='stress'>Missing-modality stress test</h2>")
    stress = results.stress_table()
    if not stress.empty:
        parts.append("<p>Each model's primary metric (mean ± std over folds) with every modality it reads "
                     "(<code>all</code>); on the held-out patients who have all of them (<code>complete</code>) "
                     "and on those who <b>really lack</b> one (<code>missing X</code>); and with one modality "
                     "<b>withheld</b> from every held-out patient at inference (<code>withheld X</code>). Models "
                     "that cannot run without a modality have no value there.</p>")
        parts.append(_table(stress))
    else:
        parts.append("<p class='meta'>(no results)</p>")

    # 2. Kaplan-Meier ------------------------------------------------------------------------------------
    parts.append("<h2 id='km'>Kaplan-Meier</h2>")
    if results.km:
        parts.append("<p>Validation patients of all folds, each in the risk group its own fold's training "
                     "cut-off gave it.</p>")
        for (model, task), curves in results.km.items():
            lr = curves.logrank
            parts.append(f"<h3>{html.escape(model)} &middot; {html.escape(task)}: log-rank p = {lr.p_value:.3g} "
                         f"(n = {' / '.join(map(str, lr.n_per_group))})</h3>")
            parts.append(_img(km_plot(curves, f"{model} / {task}"), f"Kaplan-Meier {model} {task}"))
        parts.append(_table(results.logrank))
    else:
        parts.append("<p class='meta'>(no survival model)</p>")

    # 2b. heatmaps -----------------------------------------------------------------------------------------
    parts.append("<h2 id='heatmaps'>Heatmaps</h2>")
    parts.append(heatmaps_html(heatmaps))

    # 3. training ----------------------------------------------------------------------------------------
    parts.append("<h2 id='training'>Training curves</h2>")
    if not results.history.empty:
        for (model, task), h in results.history.groupby(["model", "task"], sort=False):
            metric = "C-index" if task in ("survival", "cox") else "AUC"
            parts.append(f"<h3>{html.escape(model)} &middot; {html.escape(task)}</h3>")
            parts.append(_img(training_plot(h, f"{model}/{task}", metric), f"training {model} {task}"))
        parts.append(_table(results.training))
    else:
        parts.append("<p class='meta'>(no training history given)</p>")

    # 3b. pretraining --------------------------------------------------------------------------------------
    parts.append("<h2 id='pretraining'>Pretraining</h2>")
    if pretraining is not None and not pretraining.empty:
        parts.append("<p>Each pretrainable model's objective per epoch (every weighted term and their sum), "
                     "averaged over the folds it was pretrained on (each fold on its training patients, plus the "
                     "external slide-less patients where configured).</p>")
        for model, h in pretraining.groupby("model", sort=False):
            parts.append(f"<h3>{html.escape(str(model))}</h3>")
            parts.append(_img(pretraining_plot(h, str(model)), f"pretraining {model}"))
        last = pretraining.sort_values("epoch").groupby(["model", "fold"], sort=False).tail(1)
        parts.append("<details><summary>Final epoch per fold</summary>" + _table(last) + "</details>")
    else:
        parts.append("<p class='meta'>(no pretrained model in this run)</p>")

    # 3c. downstream tasks ---------------------------------------------------------------------------------
    parts.append("<h2 id='downstream'>Downstream tasks</h2>")
    if downstream:
        for name, frame in downstream.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(_table(frame))
    else:
        parts.append("<p class='meta'>(none in this run)</p>")

    # 4. QC -----------------------------------------------------------------------------------------------
    parts.append("<h2 id='qc'>Cohort QC</h2>")
    if not qc_frame.empty:
        n_ok = int(qc_frame.tiling_status.astype(str).eq("ok").sum()) if "tiling_status" in qc_frame else len(qc_frame)
        tiles = qc_frame.n_tiles if "n_tiles" in qc_frame else pd.Series(dtype=float)
        parts.append(f"<p>{len(qc_frame)} slides, {n_ok} tiled; tiles per slide: total {int(tiles.sum())}, "
                     f"median {tiles.median():.0f}, min {tiles.min():.0f}, max {tiles.max():.0f}.</p>")
        parts.append(_img(tiles_plot(qc_frame), "tiles per slide"))
        parts.append(quality_html(qc_frame, max_slide_rows))
        cols = [c for c in ("slide_id", "segmentation_status", "tiling_status", "reason", "tissue_area_mm2",
                            "n_pieces", "pen_fraction", "n_tiles", "qc_decision", "tiles_excluded_by_qc",
                            "tile_qc_reasons", "achieved_mpp") if c in qc_frame]
        parts.append(slides_html(qc_frame[cols], max_slide_rows))
    else:
        parts.append("<p class='meta'>(no QC summary given: run the qc_summary rule)</p>")
    parts.append(resolution_html(resolution, max_slide_rows))
    thumbs = _thumbnail_paths(thumbnails)[:max_thumbnails]
    if thumbs:
        parts.append("<h3>Segmentation QC thumbnails</h3><div class='grid'>")
        for path in thumbs:
            uri = thumbnail(path, thumb_px)
            name = path.name.removesuffix(".qc.png")
            if uri:
                parts.append(f"<div class='thumb'><img src='{uri}' alt='{html.escape(name)}'><br>"
                             f"{html.escape(name)}</div>")
        parts.append("</div>")

    # 5. provenance --------------------------------------------------------------------------------------
    parts.append("<h2 id='provenance'>Provenance</h2>")
    parts.append("<p>Every input, the stage that wrote it and when, the sha256 of its content now and the code "
                 "version recorded in its provenance. Per-slide feature stores are not re-hashed here (each "
                 "checkpoint recorded their hashes; <code>pathmm audit</code> re-hashes them).</p>")
    parts.append(provenance_html(prov))

    # 6. cost --------------------------------------------------------------------------------------------
    parts.append("<h2 id='cost'>Cost</h2>")
    parts.append("<p>Per rule, from Snakemake's benchmark files: wall seconds summed over jobs and of the longest "
                 "job, peak resident memory (MB); training folds from the training loop (peak RSS of the "
                 "process).</p>")
    parts.append(_table(cost))
    parts.append("</body></html>")
    write_text_atomic(out_html, "\n".join(parts))
    return out_html


def heatmaps_html(heatmaps: pd.DataFrame | None, thumb_px: int = 300) -> str:
    """Per run and task, each drawn slide's attention map (the contribution where the model has no attention) and
    its contribution map, scaled down, captioned with the fold, the patient, why it was chosen and its score."""
    if heatmaps is None or heatmaps.empty:
        return ("<p class='meta'>(no heatmap: enable <code>heatmaps</code> in config.yaml for runs whose model "
                "weighs tiles, or draw a slide with <code>pathmm heatmaps --run RUN --fold K --slide S</code>)</p>")
    parts = ["<p>Each fold's highest- and lowest-scored held-out patients (risk for survival), every slide of "
             "theirs computed from its stored features: <b>attention</b>, the model's own weights over the tiles "
             "(percentile within the slide), and <b>contribution</b>, gradient x input of the prediction (red "
             "raises it, blue lowers it). The folders under <code>results/heatmaps/</code> also hold each slide's "
             "QuPath GeoJSON (<code>tiles.geojson</code>) and its top / bottom tiles as images.</p>"]
    for (run, task), group in heatmaps.groupby(["run", "task"], sort=False):
        parts.append(f"<h3>{html.escape(str(run))} &middot; {html.escape(str(task))}</h3><div class='grid'>")
        for row in group.itertuples():
            score = "" if pd.isna(row.score) else f" {float(row.score):.3g}"
            text = (f"fold {row.fold} &middot; {html.escape(str(row.patient_id))}: {html.escape(str(row.why))}"
                    f"{score}<br>slide {html.escape(str(row.slide_id))}, {row.n_tiles} tiles")
            images = [row.png] + ([row.contribution_png] if row.contribution_png != row.png else [])
            for path in images:
                uri = thumbnail(path, thumb_px)
                if uri:
                    parts.append(f"<div class='thumb' style='width:{thumb_px + 10}px'><img src='{uri}' "
                                 f"style='max-width:{thumb_px}px;max-height:{thumb_px}px' "
                                 f"alt='{html.escape(Path(path).stem)} {html.escape(str(row.slide_id))}'><br>"
                                 f"{Path(path).stem}: {text}</div>")
        parts.append("</div>")
    return "".join(parts)


def resolution_html(resolution: str | os.PathLike[str] | pd.DataFrame | None, max_rows: int = 200) -> str:
    """The cohort resolution table as the report shows it: the slides grouped by where their mpp came from
    (source, vendor, objective, mpp to 3 digits) and every flagged slide (at most ``max_rows``) with the reason a
    slide job refuses it."""
    from pathmm_pipeline.preprocess.resolution import read_resolution_table

    table = resolution if isinstance(resolution, pd.DataFrame) or resolution is None else \
        read_resolution_table(resolution)
    parts = ["<h3>Slide resolution</h3>"]
    if table is None or table.empty:
        return parts[0] + "<p class='meta'>(no resolution table: written by the cohort_manifest rule)</p>"
    shown = table.assign(mpp_x=table.mpp_x.round(3), mpp_y=table.mpp_y.round(3),
                         objective_power=table.objective_power.fillna(-1), vendor=table.vendor.fillna("-"))
    groups = (shown.groupby(["mpp_source", "vendor", "objective_power", "mpp_x", "mpp_y"], dropna=False)
              .size().rename("slides").reset_index().sort_values("slides", ascending=False))
    groups["objective_power"] = groups.objective_power.where(groups.objective_power >= 0, None)
    flagged = table[table["flags"].astype(str) != ""]
    mpp = table.mpp_x.dropna()
    span = f"{mpp.min():.3g}-{mpp.max():.3g} um/px" if not mpp.empty else "none"
    parts.append(f"<p>{len(table)} slides read from their headers at manifest time (mpp {span}); "
                 f"<b>{len(flagged)} flagged</b>: a slide job refuses them. Full table: "
                 "<code>results/cohort/resolution.csv</code>.</p>")
    parts.append(_table(groups, max_rows=max_rows))
    if not flagged.empty:
        parts.append("<h4>Flagged slides</h4>" + _table(flagged[["slide_id", "mpp_x", "mpp_y", "mpp_source",
                                                                  "flags"]], max_rows=max_rows,
                                                        full="<code>results/cohort/resolution.csv</code>"))
    return "".join(parts)


def protocol_html(results: ResultsTables, protocol: Mapping[str, Any]) -> str:
    """The evaluation protocol as a reader checks it: the splits, each run's selection rule, and how every
    pretraining stage was kept apart from the held-out patients."""
    lines = ["<ul>"]
    splits = protocol.get("splits")
    if splits:
        lines.append(f"<li><b>Splits</b>: {html.escape(str(splits))}. Every number is computed on each fold's "
                     "held-out patients only.</li>")
    runs = (results.training.groupby("selection")["model"].unique() if not results.training.empty
            and "selection" in results.training else pd.Series(dtype=object))
    for selection, models in runs.items():
        rule = ("the last epoch of a fixed schedule is kept; no validation data is read while training"
                if selection == "last" else
                f"an inner-validation split of each fold's training patients "
                f"({html.escape(str(protocol.get('inner', 'inner_<k>.csv beside each split file')))}) chooses the "
                "epoch and stops early; the held-out fold is read only by the final evaluation")
        lines.append(f"<li><b>selection: {html.escape(str(selection))}</b> ({len(models)} run(s): "
                     f"{html.escape(', '.join(map(str, models)))}): {rule}.</li>")
    lines.append("<li><b>Fitted on training patients only</b>: gene scalers, survival time bins, class weights, "
                 "report-decoder vocabulary and feature statistics, probe scalers and penalties (searched on an "
                 "inner split under <code>inner</code>, fixed under <code>last</code>), Kaplan-Meier cut-offs and "
                 "the IPCW censoring distribution.</li>")
    for line in protocol.get("pretraining", ()):
        lines.append(f"<li><b>Pretraining</b>: {html.escape(str(line))}</li>")
    lines.append("</ul>")
    return "".join(lines)


def write_report_provenance(out_html: str | os.PathLike[str], fold_dirs: Sequence[str | os.PathLike[str]],
                            results_dir: str | os.PathLike[str], tables: Sequence[str | os.PathLike[str]],
                            params: Mapping[str, Any]) -> Path:
    """The evaluation report's provenance sidecar: every fold checkpoint it aggregates (each with its own
    provenance, so ``pathmm audit --lineage`` goes report -> models -> features -> tiles -> mask -> slide) and
    the QC table are its inputs; the summary tables written beside it are its outputs."""
    from pathmm_pipeline.core.provenance import build_provenance, write_sidecar

    root = Path(results_dir)
    inputs: dict[str, str | os.PathLike[str]] = {}
    for fold_dir in fold_dirs:
        checkpoint = Path(fold_dir) / "checkpoint.pt"
        try:
            role = str(checkpoint.parent.relative_to(root / "training"))
        except ValueError:
            role = str(checkpoint.parent)
        inputs[f"model:{role}"] = checkpoint
    qc = root / "qc" / "slides.parquet"
    if qc.is_file():
        inputs["qc"] = qc
    outputs = {Path(t).name: t for t in tables if Path(t).is_file()}
    record = build_provenance("evaluate", inputs, dict(params), outputs=outputs)
    return write_sidecar(out_html, record)
