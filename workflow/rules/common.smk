# Shared definitions: the validated sample sheet and the output layout. The only writes at parse time are the
# content-addressed caches and list files under .snakemake/pathmm/ (pathmm_pipeline.plan.samplesheet / .lists).
import json
import os
import shlex
import sys
from pathlib import Path

from pathmm_pipeline.core.errors import PathmmError
from pathmm_pipeline.plan.resources import inputs_size_mb, job_memory_mb
from pathmm_pipeline.plan.buckets import slide_buckets
from pathmm_pipeline.plan.cards import EXTRACTION_FEATURE_KEYS, weights_files
from pathmm_pipeline.plan.training import CohortModalities, TrainingPlan
from pathmm_pipeline.plan.lists import list_file
from pathmm_pipeline.plan.samplesheet import validated_samplesheet
from pathmm_pipeline.preprocess.samplesheet import slide_entries

RESULTS = config["results"]

# Every rule calls `pathmm`: the one installed beside the Python that runs Snakemake, so the DAG runs from a shell
# whose PATH lacks the venv (a SLURM job re-parses this file with the same interpreter). A rule's conda
# environment, when activated, puts its own bin first again.
_PATHMM_BIN = Path(sys.executable).parent
if (_PATHMM_BIN / "pathmm").exists() and str(_PATHMM_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = f"{_PATHMM_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

try:  # validated in full by the main process; a cluster job reads its cache of the same content
    SAMPLES = validated_samplesheet(config["samplesheet"], config["cancer_types"], config["labels"],
                                    trust_cache=workflow.remote_exec)
except PathmmError as exc:
    raise WorkflowError(f"the sample sheet is invalid, no job was started:\n{exc}") from None

SLIDES = slide_entries(SAMPLES)
SLIDE_IDS = sorted(SLIDES)

ENCODERS = config["features"]["encoders"]

if config["resources"]["scratch"]:  # each job builds its stores on node-local disk (pathmm_pipeline.core.atomic)
    _scratch = config["resources"]["scratch"].replace("{", "{{").replace("}", "}}")  # the prefix is formatted
    shell.prefix(f'set -euo pipefail; export PATHMM_SCRATCH="{_scratch}"; ')


def _patient_files(column):
    """patient_id -> file for a per-patient column (the sample sheet checked that slides agree)."""
    if column not in SAMPLES:
        return {}
    rows = SAMPLES.dropna(subset=[column]).drop_duplicates("patient_id")
    return dict(zip(rows.patient_id, rows[column]))


REPORTS = _patient_files("report_path")
_EXPRESSION = _patient_files("expression_path")
EXPRESSION_FILES = sorted(set(_EXPRESSION.values()))
PATIENTS_WITH_EXPRESSION = sorted(_EXPRESSION)

wildcard_constraints:
    slide="[A-Za-z0-9._-]+",
    encoder="[A-Za-z0-9_]+",
    patient="[A-Za-z0-9._-]+",
    model="[A-Za-z0-9_]+",
    task="[A-Za-z0-9_-]+",
    fold="[0-9]+",


def settings_json(section):
    """A config section as canonical JSON: passed through params so that a change re-runs the rule."""
    return json.dumps(config[section], sort_keys=True)


def slide_path(wildcards):
    return SLIDES[wildcards.slide].path


def slide_mpp(wildcards):
    mpp = SLIDES[wildcards.slide].mpp
    return "" if mpp is None else repr(mpp)


def slide_roi(wildcards):
    """The slide's ROI GeoJSON (sample sheet roi_path) as an input list, empty without one: a new or edited file
    re-runs its tiling and everything downstream."""
    roi = SLIDES[wildcards.slide].roi
    return [roi] if roi else []


def slide_roi_args(wildcards):
    """``--roi PATH`` for a slide with an ROI file, nothing otherwise."""
    roi = SLIDES[wildcards.slide].roi
    return f"--roi {shlex.quote(roi)}" if roi else ""


def tiling_settings_json(wildcards):
    """tiling: as canonical JSON for one slide; its roi: settings only for a slide with an ROI file, so that
    changing them re-runs those slides alone."""
    settings = dict(config["tiling"])
    if not SLIDES[wildcards.slide].roi:
        settings.pop("roi", None)
    return json.dumps(settings, sort_keys=True)


def slide_backend_args():
    args = f"--backend {config['slide']['backend']}"
    return args if config["slide"]["fallback"] else args + " --no-fallback"


try:  # the training half's plan (runs, folds, encoders' weights, settings): pathmm_pipeline.plan.training
    PLAN = TrainingPlan(config, CohortModalities(frozenset(e.patient_id for e in SLIDES.values()),
                                                 frozenset(PATIENTS_WITH_EXPRESSION), frozenset(REPORTS)))
except PathmmError as exc:
    raise WorkflowError(f"the training configuration is invalid, no job was started:\n{exc}") from None


def encoder_weights(encoder):
    """The weights of a feature folder's encoder: config's encoder_weights, mSTAR stage 2's, or the default."""
    return PLAN.encoder_weights(encoder)


def encoder_weights_files(encoder):
    """Local weights file(s) of an encoder, so that new weights re-run extraction (none for hub ids)."""
    weights = encoder_weights(encoder)
    if PLAN.is_pipeline_output(weights):
        return [weights]  # written by a rule of this pipeline (mSTAR stage 2): Snakemake runs that rule first
    return weights_files(PLAN.encoder_alias(encoder), weights)


def extraction_settings_json(encoder):
    """What changes a feature (ExtractionSettings.FEATURE_KEYS), as canonical JSON for params: a re-run trigger."""
    settings = {k: config["features"][k] for k in EXTRACTION_FEATURE_KEYS if k not in ("encoder", "weights")}
    settings.update(encoder=PLAN.encoder_alias(encoder), weights=encoder_weights(encoder))
    return json.dumps(settings, sort_keys=True)


def extraction_throughput():
    """What only changes the speed, as resources (no re-run trigger); the job's threads come with {threads}."""
    workers = config["features"]["num_workers"]
    return {"extract_batch_size": int(config["features"]["batch_size"]),
            "extract_workers": -1 if workers == "auto" else int(workers),
            "extract_channels_last": int(bool(config["features"]["channels_last"])),
            "extract_compile": int(bool(config["features"]["compile"]))}


def slide_limits():
    """The caps on one slide (slide.max_*, the mpp range and x/y ratio) as resources: they decide whether a job may run and never change an
    output, so they are no re-run trigger (params would re-run every slide when a cap is raised for one)."""
    caps = config["slide"]
    return {"slide_max_side_px": int(caps["max_side_px"]), "slide_max_megapixels": int(caps["max_megapixels"]),
            "slide_max_tiles": int(caps["max_tiles"]), "slide_mpp_range": f"{caps['min_mpp']}:{caps['max_mpp']}",
            "slide_max_mpp_xy_ratio": str(caps["max_mpp_xy_ratio"])}


#: the slide commands' cap arguments (read from the job's resources, see slide_limits)
LIMIT_ARGS = (" --max-side-px {resources.slide_max_side_px} --max-megapixels {resources.slide_max_megapixels}"
              " --max-tiles {resources.slide_max_tiles} --mpp-range {resources.slide_mpp_range}"
              " --max-mpp-xy-ratio {resources.slide_max_mpp_xy_ratio}")

#: the extraction commands' speed arguments (read from the job's resources and threads)
THROUGHPUT_ARGS = ("--batch-size {resources.extract_batch_size} --num-workers {resources.extract_workers}"
                   " --channels-last {resources.extract_channels_last} --compile {resources.extract_compile}"
                   " --threads {threads}")


def memory(base_mb, scale_with=(), per_input_mb=0.0):
    """A rule's mem_mb: ``base_mb`` plus ``per_input_mb`` per MiB of the named inputs, grown on each retry by
    ``resources.retry_memory_growth`` (a job SLURM killed for memory asks for more when restarted)."""

    def mem_mb(wildcards, input, attempt):
        paths = []
        for key in scale_with:
            if key in input.keys():
                value = input[key]
                paths.extend([value] if isinstance(value, str) else value)
        return job_memory_mb(base_mb, attempt, input_mb=inputs_size_mb(paths), per_input_mb=per_input_mb,
                             retry_growth=config["resources"]["retry_memory_growth"],
                             cap_mb=config["resources"]["max_mem_mb"])

    return mem_mb


def bucket_rule(encoder, bucket):
    """The name of the extraction rule of one bucket of slides (features.slides_per_job above 1)."""
    return f"extract_features__{encoder}__{bucket}"


def bucket_jobs_json(encoder, slides):
    """The slides of one bucket job as the ``--jobs`` JSON of ``pathmm extract-features-bucket``."""
    return json.dumps([{"slide": str(SLIDES[s].path), "tiles": f"{RESULTS}/tiles/{s}.zarr",
                        "store": f"{RESULTS}/features/{encoder}/{s}.zarr", "slide_id": s,
                        "mpp_override": SLIDES[s].mpp} for s in slides], sort_keys=True)


def inherit_resources(name, base):
    """Give rule ``name`` the resources and threads set for rule ``base`` on the command line or in the profile
    (``set-resources`` / ``set-threads``), unless set for ``name`` itself: the bucket rules, generated per
    cohort, take the profile's ``extract_features`` settings (GPU partition, gres, CPUs)."""
    settings = workflow.resource_settings
    target = workflow.get_rule(name)
    if name not in settings.overwrite_resources:
        target.resources.update(settings._parsed_overwrite_resources.get(base, {}))
    if name not in settings.overwrite_threads and base in settings.overwrite_threads:
        target.resources["_cores"] = settings._parsed_overwrite_threads[base]
