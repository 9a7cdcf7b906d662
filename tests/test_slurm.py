"""The DAG through a real SLURM: a one-node cluster on this machine (Debian's slurm-wlm and munge, started by
hand: there is no systemd), the repository's `profiles/slurm` with the site overrides a user would pass
(partition, no account, no GPU), and the jobs checked in the controller (`scontrol show jobs`: the rule of each
job, its state and the memory it asked for).

Without accounting (slurmdbd) the profile's status checks use `squeue`; finished jobs stay visible to
`scontrol` for an hour (MinJobAge). Skipped, with the reason, only where SLURM cannot be installed or started
(no root, no apt-get)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

CONF = Path("/etc/slurm/slurm.conf")


def _sh(*cmd: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def _cluster_up() -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True) if shutil.which("sinfo") \
        else None
    return bool(proc and proc.returncode == 0 and "idle" in proc.stdout)


def start_cluster(state: Path) -> None:
    """Install (when missing) and start munge, slurmctld and slurmd as a one-node cluster; skip when impossible."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (to write /etc/slurm and start the daemons)")
    if shutil.which("slurmctld") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("SLURM is not installed and apt-get is not available to install slurm-wlm")
        try:
            _sh("apt-get", "update", "-qq", timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge", "slurm-client"], check=True,
                           capture_output=True, text=True, timeout=900,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"could not install slurm-wlm and munge with apt-get: {exc}")
    if _cluster_up():
        return
    host = _sh("hostname", "-s").stdout.strip()
    node = _sh("slurmd", "-C").stdout.splitlines()[0]
    node = re.sub(r"RealMemory=(\d+)", lambda m: f"RealMemory={int(int(m.group(1)) * 0.8)}", node)
    for sub in ("state", "spool", "log"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(f"""ClusterName=pathmm
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=3600
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
{node} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], capture_output=True)
    subprocess.run(["slurmctld"], capture_output=True)
    time.sleep(2)
    subprocess.run(["slurmd"], capture_output=True)
    for _ in range(60):
        if _cluster_up():
            return
        time.sleep(1)
    logs = "".join((state / "log" / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log")
                   if (state / "log" / f).is_file())
    pytest.skip(f"the local SLURM cluster did not come up within 60 s: {logs}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> None:
    start_cluster(tmp_path_factory.mktemp("slurm"))


@pytest.fixture(scope="module")
def workflow(cluster, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    from pathmm_pipeline.badcorpus import build_bad_corpus

    root = tmp_path_factory.mktemp("slurm_wf")
    build_bad_corpus(root / "corpus")
    for s in ("A", "B"):
        shutil.copy(root / "corpus" / "slides" / "good.svs", root / f"{s}.svs")
    (root / "samplesheet.csv").write_text("patient_id,slide_id,slide_path,cancer_type,survival_time,survival_event\n"
                                          "P1,S-A,A.svs,BLCA,10,1\nP2,S-B,B.svs,STAD,20,0\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(root / "samplesheet.csv"), results="results")
    config["training"].update(models=[], compare_encoders={})  # two patients make no folds
    config["features"]["encoders"] = ["vit_tiny_test"]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # the site overrides a user passes for a cluster without accounting, account or GPUs
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(root),
         "--configfile", str(root / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
         "--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "1",
         "--default-resources", "slurm_partition=cpu", "mem_mb=1000", "runtime=10",
         "--set-resources", "extract_features:slurm_partition=cpu", "extract_features:gres=",
         "extract_features:mem_mb=2000", "extract_features:cpus_per_task=1", "--set-threads", "extract_features=1",
         "--jobs", "4", "--latency-wait", "5"],
        capture_output=True, text=True, env=env, timeout=1200)
    return root, proc


def jobs_of(root: Path) -> list[dict[str, str]]:
    """The controller's records of the jobs whose logs lie under ``root``."""
    text = _sh("scontrol", "show", "jobs", "-o").stdout
    jobs = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]
    return [j for j in jobs if j.get("StdOut", "").startswith(str(root))]


def test_the_dag_runs_through_slurm_and_writes_its_outputs(workflow):
    root, proc = workflow
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    results = root / "results"
    assert (results / "cohort" / "manifest.parquet").is_file()
    for slide in ("S-A", "S-B"):
        assert (results / "features" / "vit_tiny_test" / f"{slide}.zarr" / "zarr.json").is_file()


def test_every_job_went_through_slurm_with_its_rule_resources(workflow):
    root, proc = workflow
    jobs = jobs_of(root)
    assert jobs, "no SLURM job of this workflow in the controller"
    assert all(j["JobState"] == "COMPLETED" for j in jobs), [(j["JobId"], j["JobState"]) for j in jobs]
    comments = {j["Comment"] for j in jobs}
    assert any(c.startswith("rule_cohort_manifest") for c in comments), comments
    # segmentation and tiling of a slide share one submission (the profile's `preprocess` group)
    assert any(c.startswith("rule_preprocess_segment_tissue_tile_slide") for c in comments), comments
    extraction = [j for j in jobs if j["Comment"].startswith("rule_extract_features")]
    assert len(extraction) == 2 and all(j["MinMemoryNode"] == "2000M" for j in extraction), extraction
    grouped = [j for j in jobs if "preprocess" in j["Comment"]]
    assert all(j["Partition"] == "cpu" for j in jobs) and grouped
