"""The DAG through a real SLURM, to the evaluation report: a one-node cluster on this machine (Debian's slurm-wlm,
munge, slurmdbd with MariaDB for accounting, all started by hand: there is no systemd), the repository's
`profiles/slurm` with the site overrides a user would pass (partition, account, no GPU), and every job checked in
the accounting database with `sacct` (rule, state, memory asked for and used, attempts).

Memory is enforced (`JobAcctGatherParams=OverMemoryKill`): the feature extraction asks for too little on its first
attempt, SLURM kills it, and the profile's retry asks for more (the rules grow `mem_mb` on every attempt). Skipped,
with the reason, only where SLURM cannot be installed (no root, no apt-get, the install failing); a daemon that does
not come up fails the tests with its log. Daemons left dead with their sockets and pid files in place (a machine
restored from an image) are started again."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.slow

CONF = Path("/etc/slurm/slurm.conf")
DBD_CONF = Path("/etc/slurm/slurmdbd.conf")
STATE = Path("/var/spool/pathmm-slurm")  # outlives pytest's rotating temporary folders, as the daemons do
PACKAGES = ("slurm-wlm", "munge", "slurm-client", "slurmdbd", "mariadb-server")
ACCOUNT = "pathmm"


def _sh(*cmd: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with what it printed (the exception alone says only the exit status)."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _cluster_up() -> bool:
    """The cluster this module configures is up: an idle node, accounting answering, memory enforced."""
    if shutil.which("sinfo") is None or not CONF.is_file() or "job_comment" not in CONF.read_text() or \
            f"StateSaveLocation={STATE}/state" not in CONF.read_text() or not (STATE / "state").is_dir():
        return False
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True)
    return nodes.returncode == 0 and "idle" in nodes.stdout and accounting.returncode == 0


def _wait_for(check, seconds: int) -> bool:
    for _ in range(seconds * 2):
        if check():
            return True
        time.sleep(0.5)
    return False


def _logs(state: Path) -> str:
    return "".join(f"\n--- {f.name}\n" + f.read_text()[-1200:] for f in sorted((state / "log").glob("*.log")))


def _install() -> None:
    missing = [tool for tool in ("slurmctld", "slurmdbd", "mariadbd", "munged") if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing) and apt-get is not available")
    try:
        _sh("apt-get", "update", "-qq", timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
        pytest.skip(f"could not install {' '.join(PACKAGES)} with apt-get: {exc}")


def _stop_daemons() -> None:
    for daemon in ("slurmd", "slurmctld", "slurmdbd"):
        subprocess.run(["pkill", "-x", daemon], capture_output=True)
    _wait_for(lambda: all(subprocess.run(["pgrep", "-x", d], capture_output=True).returncode != 0
                          for d in ("slurmd", "slurmctld", "slurmdbd")), 20)


def _start_munge() -> None:
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        # --force: a socket left in /run by a munged that is gone (a machine restored from an image) is not in use
        _sh("runuser", "-u", "munge", "--", "munged", "--force")


def _start_accounting(state: Path) -> None:
    """MariaDB (the socket on localhost), a database user for slurmdbd, slurmdbd, and this cluster, account and
    user registered in it."""
    socket = Path("/run/mysqld/mysqld.sock")

    def answers() -> bool:
        return subprocess.run(["mariadb-admin", f"--socket={socket}", "ping"], capture_output=True).returncode == 0

    if not answers():
        # A machine restored from an image keeps /run: a socket and pid file left by a server that is gone.
        socket.unlink(missing_ok=True)
        socket.with_name("mysqld.pid").unlink(missing_ok=True)
        socket.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(socket.parent, "mysql", "mysql")
        if not Path("/var/lib/mysql/mysql").is_dir():
            _sh("mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql")
        with open(state / "log" / "mariadb.log", "w") as log:
            subprocess.Popen(["mariadbd", "--user=mysql", "--datadir=/var/lib/mysql", f"--socket={socket}",
                              "--bind-address=127.0.0.1"], stdout=log, stderr=log, start_new_session=True)
        if not _wait_for(answers, 60):
            pytest.fail(f"MariaDB did not answer within 60 s: {_logs(state)}")
    _sh("mariadb", "-e", "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'pathmm';"
        " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;")
    DBD_CONF.write_text(f"""AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=pathmm
StorageLoc=slurm_acct_db
PidFile={state}/slurmdbd.pid
LogFile={state}/log/slurmdbd.log
""")
    DBD_CONF.chmod(0o600)
    subprocess.run(["slurmdbd"], capture_output=True)
    if not _wait_for(lambda: subprocess.run(["sacctmgr", "-n", "show", "cluster"], capture_output=True)
                     .returncode == 0, 30):
        pytest.fail(f"slurmdbd did not answer within 30 s: {_logs(state)}")
    for entity in (("cluster", "pathmm"), ("account", ACCOUNT, "Cluster=pathmm"),
                   ("user", "root", f"Account={ACCOUNT}", "Cluster=pathmm")):
        subprocess.run(["sacctmgr", "-i", "add", *entity], capture_output=True)


def start_cluster(state: Path) -> None:
    """Install (when missing) and start munge, MariaDB, slurmdbd, slurmctld and slurmd as a one-node cluster with
    accounting and memory enforcement; skip when impossible."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (to write /etc/slurm and start the daemons)")
    _install()
    if _cluster_up():
        return
    _stop_daemons()
    host = _sh("hostname", "-s").stdout.strip()
    node = _sh("slurmd", "-C").stdout.splitlines()[0]
    node = re.sub(r"RealMemory=(\d+)", lambda m: f"RealMemory={int(int(m.group(1)) * 0.8)}", node)
    for sub in ("state", "spool", "log"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    _start_munge()
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
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
{node} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")  # sacctmgr reads where the accounting daemon is from here
    _start_accounting(state)
    subprocess.run(["slurmctld"], capture_output=True)
    time.sleep(2)
    subprocess.run(["slurmd"], capture_output=True)
    if not _wait_for(_cluster_up, 60):
        pytest.fail(f"the local SLURM cluster did not come up within 60 s: {_logs(state)}")


@pytest.fixture(scope="module")
def cluster() -> None:
    start_cluster(STATE)


FEATURE_MEM_MB = 400  # EfficientNet-Lite0 extraction peaks at ~1.5 GB: killed on the first attempt
RETRY_GROWTH = 6.0
MAX_MEM_MB = 8000  # no request beyond this node size, however often a job is retried


@pytest.fixture(scope="module")
def workflow(cluster, source_slide, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A reduced demo (6 patients, expression and reports; ABMIL; 2 folds) through profiles/slurm to
    the evaluation report."""
    from pathmm_pipeline.demo import build_demo_cohort

    root = tmp_path_factory.mktemp("slurm_wf")
    # sacct reads from here on: the accounting database outlives pytest's folders, whose names come round again
    (root / "started").write_text(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5)))
    sheet = build_demo_cohort(root / "cohort", n_patients=4, seed=5, source_slide=source_slide, slide_scale=0.4,
                              n_slide_less=0)  # the cluster behaviour is under test here, not the cohort
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(samplesheet=str(sheet), results="results")
    config["segmentation"].update(min_tissue_area_um2=16000.0, min_hole_area_um2=6400.0)  # slides shrunk by 0.4
    config["features"].update(batch_size=16, num_workers=0, threads=1, mem_mb=FEATURE_MEM_MB)
    # each job builds its stores in its own scratch folder (a stand-in for node-local ${TMPDIR})
    config["resources"].update(retry_memory_growth=RETRY_GROWTH, max_mem_mb=MAX_MEM_MB,
                               scratch=str(root / "scratch" / "job-$SLURM_JOB_ID"))
    config["training"].update(models=["abmil"], folds=2, n_boot=20, compare_encoders={}, downstream={})
    config["training"]["settings"].update(epochs=3, patience=2, n_bins=1)  # 1 event per training fold
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # the site overrides a user passes: partition and account, and no GPU partition on this cluster
    proc = run_watched(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(root),
         "--configfile", str(root / "config.yaml"), "--profile", str(REPO / "profiles" / "slurm"),
         "--slurm-init-seconds-before-status-checks", "1",
         "--default-resources", "slurm_partition=cpu", f"slurm_account={ACCOUNT}", "runtime=10",
         "--set-resources", "extract_features:slurm_partition=cpu", "extract_features:gres=",
         "extract_features:cpus_per_task=1", "--set-threads", "extract_features=1",
         # a group asks for its members' cores together: 2 fit this node (the option replaces the profile's list)
         "--group-components", "preprocess=2", "reports=2",
         "--jobs", "4", "--latency-wait", "5"],
        root, env)
    return root, proc


#: reasons for which SLURM keeps a job pending for ever on this cluster (a request no node can satisfy)
NEVER_STARTS = ("PartitionConfig", "ReqNodeNotAvail", "PartitionNodeLimit", "BadConstraints")
STUCK_AFTER_S = 60.0


def run_watched(cmd: list[str], root: Path, env: dict[str, str], timeout: float = 1500.0
                ) -> subprocess.CompletedProcess:
    """Run Snakemake, failing at once (not after the timeout) when one of its jobs asks for more than the
    node has and would stay pending for ever: the rule and SLURM's reason are named."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        started, pending_since = time.monotonic(), {}
        while child.poll() is None:
            time.sleep(3)
            listing = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i|%r|%k|%Z"], capture_output=True,
                                     text=True).stdout
            for line in listing.splitlines():
                job, reason, comment, workdir = (line.split("|") + ["", "", "", ""])[:4]
                if not workdir.startswith(str(root)) or reason not in NEVER_STARTS:
                    continue
                first = pending_since.setdefault(job, time.monotonic())
                if time.monotonic() - first > STUCK_AFTER_S:
                    child.kill()
                    subprocess.run(["scancel", job], capture_output=True)
                    pytest.fail(f"SLURM job {job} ({comment.strip()}) stays pending: {reason} "
                                f"(it asks for more than the node has)")
            if time.monotonic() - started > timeout:
                child.kill()
                pytest.fail(f"snakemake ran over {timeout:.0f} s")
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read())


def jobs_of(root: Path) -> pd.DataFrame:
    """Accounting records (sacct) of this workflow's jobs, one row per job allocation."""
    fields = ["JobID", "JobName", "Comment", "State", "ReqMem", "MaxRSS", "Account", "Partition", "WorkDir"]
    started = (root / "started").read_text().strip()
    text = _sh("sacct", "-a", "-P", "-n", "-S", started, "--format", ",".join(fields)).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in text.splitlines() if line.strip()]
    table = pd.DataFrame(rows, columns=fields)
    steps = table[table.JobID.str.contains(r"\.")]  # MaxRSS lives on the job's steps
    table = table[~table.JobID.str.contains(r"\.")].copy()
    rss = steps.assign(job=steps.JobID.str.split(".").str[0]).groupby("job").MaxRSS.agg(
        lambda s: max((_mb(v) for v in s), default=0.0))
    table["max_rss_mb"] = table.JobID.map(rss).fillna(0.0)
    table["req_mb"] = table.ReqMem.map(_mb)
    return table[table.WorkDir.str.startswith(str(root))]


def _mb(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)([KMGT]?)\w*", value or "")
    if not match:
        return 0.0
    return float(match.group(1)) * {"": 1 / 1024 ** 2, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[
        match.group(2)]


def test_the_dag_runs_through_slurm_to_the_evaluation_report(workflow):
    root, proc = workflow
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    results = root / "results"
    html = (results / "evaluation" / "report.html").read_text()
    assert "abmil" in html and "C-index" in html
    for fold in (0, 1):
        assert (results / "training" / "efficientnet_lite0" / "abmil" / "survival" / f"fold_{fold}" /
                "metrics.csv").is_file()
    from pathmm_pipeline.core.audit import audit, lineage

    stores, stale = audit(results)
    assert stores and all(s.ok for s in stores) and stale == []
    assert any(s.stage == "evaluate" and s.path.endswith("report.html") for s in stores)
    # the report's chain goes back to every raw slide: report -> models -> features -> tiles -> mask -> slide
    chain = "\n".join(lineage(results / "evaluation" / "report.html"))
    assert chain.startswith("evaluate:")
    for stage in ("train:", "features:", "tiling:", "segmentation:", "manifest:"):
        assert stage in chain, stage
    sheet = pd.read_csv(root / "cohort" / "samplesheet.csv")
    for slide in sheet.slide_path:
        assert f"raw: {(root / 'cohort' / slide).resolve()}" in chain, slide


def test_every_job_went_through_slurm_with_its_rule_resources(workflow):
    root, proc = workflow
    jobs = jobs_of(root)
    assert len(jobs), "no SLURM job of this workflow in the accounting database"
    rules = jobs.Comment.str.replace(r"^rule_", "", regex=True).str.split("_wildcards").str[0]
    for rule in ("cohort_manifest", "extract_features", "genomics", "merge_reports", "embed_reports",
                 "make_splits", "train", "evaluate"):
        assert rules.str.startswith(rule).any(), (rule, sorted(set(rules)))
    # segmentation and tiling of a slide share one submission (the profile's `preprocess` group)
    assert rules.str.startswith("preprocess_segment_tissue_tile_slide").any(), sorted(set(rules))
    n_patients = pd.read_csv(root / "cohort" / "samplesheet.csv").patient_id.nunique()
    assert 0 < (rules == "reports_clean_report").sum() < n_patients, sorted(rules)  # reports share submissions
    assert set(jobs.Account) == {ACCOUNT} and set(jobs.Partition) == {"cpu"}
    done = jobs[jobs.State == "COMPLETED"]
    first_attempts = jobs.Comment.str.startswith("rule_extract_features") & (jobs.State != "COMPLETED")
    assert len(done) == len(jobs) - first_attempts.sum(), jobs[["Comment", "State"]]  # only those failed
    train = done[rules.loc[done.index].str.startswith("train")]
    assert len(train) == 2 and (train.max_rss_mb > 0).all()
    # the profile's slurm-no-requeue reached sbatch: SLURM itself never starts a second copy of a job
    last = max(jobs.JobID, key=int)
    shown = subprocess.run(["scontrol", "-o", "show", "job", last], capture_output=True, text=True).stdout
    if "Requeue=" in shown:  # finished jobs stay visible for MinJobAge (300 s by default)
        assert "Requeue=0" in shown, shown


def test_a_job_killed_for_memory_is_retried_with_more(workflow):
    """Every extraction's first attempt asks for FEATURE_MEM_MB (+ 3x the weights) and is killed by SLURM for
    exceeding it; Snakemake resubmits it (the profile's restart-times) asking RETRY_GROWTH times more, and it
    completes: the run ends complete."""
    root, proc = workflow
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    jobs = jobs_of(root)
    extraction = jobs[jobs.Comment.str.startswith("rule_extract_features")]
    n_slides = pd.read_csv(root / "cohort" / "samplesheet.csv").slide_id.nunique()
    killed = extraction[extraction.State != "COMPLETED"].sort_values("Comment")
    retried = extraction[extraction.State == "COMPLETED"].sort_values("Comment")
    assert len(killed) == n_slides and list(killed.Comment) == list(retried.Comment), extraction[
        ["Comment", "State", "ReqMem"]]
    assert set(killed.State) <= {"FAILED", "OUT_OF_MEMORY"} and (killed.req_mb < 500).all(), killed
    for job in killed.JobID:  # the step was killed by slurmstepd for memory, as its SLURM log says
        log = next((root / ".snakemake" / "slurm_logs").rglob(f"{job}.log")).read_text()
        assert "exceeded memory limit" in log.lower(), log[-2000:]
    ratio = retried.req_mb.to_numpy() / killed.req_mb.to_numpy()
    assert (abs(ratio - RETRY_GROWTH) < 0.05).all(), ratio


def test_jobs_build_their_stores_in_their_own_scratch_folder(workflow):
    """With ``resources.scratch`` set, every job that writes a store builds it under its own (per SLURM job)
    scratch folder and moves it into place: each completed extraction job made its folder and left it empty."""
    root, proc = workflow
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    jobs = jobs_of(root)
    used = {p.name.removeprefix("job-"): p for p in (root / "scratch").iterdir()}
    assert set(used) <= set(jobs.JobID), (sorted(used), sorted(jobs.JobID))
    done = jobs[jobs.State == "COMPLETED"]
    extraction = set(done[done.Comment.str.startswith("rule_extract_features")].JobID)
    preprocessing = set(done[done.Comment.str.startswith("rule_preprocess")].JobID)
    assert extraction and extraction <= set(used) and preprocessing <= set(used)
    for job_id in set(used) & set(done.JobID):
        assert list(used[job_id].iterdir()) == [], list(used[job_id].iterdir())
