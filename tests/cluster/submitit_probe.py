"""Probe submitit's SLURM behaviour on the single-node test cluster (tests/cluster/slurm_up.sh).

Not a test (pytest does not collect it): a runnable record of what submitit does on SLURM 22.05.
Usage: python submitit_probe.py MODE [FOLDER]
  MODE: basic gpu toobig(+CPUS MEM_GB) fail cancel sigterm
        timeout_ckpt timeout_plain nodb_cancel (the last with slurmdbd stopped)
Every job is tiny and has a 1-minute time limit.
"""

import os
import socket
import subprocess
import sys
import time

import submitit


def hello(x):
    return {"x": x, "host": socket.gethostname(), "t": time.time(), "pid": os.getpid()}


def boom():
    raise ValueError("probe failure on purpose")


def sleeper(seconds):
    for _ in range(int(seconds)):
        time.sleep(1)
    return "slept"


class Ticker(submitit.helpers.Checkpointable):
    """Counts seconds forever; checkpoint() keeps the count so a requeued run continues."""

    def __init__(self):
        self.count = 0
        self.starts = []

    def __call__(self, until):
        self.starts.append(time.time())
        print("start", self.starts, "count", self.count, flush=True)
        while self.count < until:
            time.sleep(1)
            self.count += 1
        return {"count": self.count, "starts": self.starts}


def executor(folder, max_num_timeout=3, **kw):
    ex = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout
    )
    params = dict(timeout_min=1, slurm_partition="main", cpus_per_task=1, mem_gb=1)
    params.update(kw)
    ex.update_parameters(**params)
    return ex


def t(msg, t0):
    print(f"[{time.time() - t0:7.2f}s] {msg}", flush=True)


def main():
    mode = sys.argv[1]
    folder = sys.argv[2] if len(sys.argv) > 2 else f"/tmp/probe/{mode}/%j"
    t0 = time.time()
    if mode == "basic":
        ex = executor(folder)
        job = ex.submit(hello, 1)
        t(f"submitted {job.job_id}", t0)
        res = job.result()
        t(f"result {res}; submit->function start {res['t'] - t0:.2f}s", t0)
        t(f"paths: stdout={job.paths.stdout} stderr={job.paths.stderr}", t0)
    elif mode in ("gpu", "toobig"):
        kw = {"gpus_per_node": 1} if mode == "gpu" else {}
        if mode == "toobig":
            kw = dict(cpus_per_task=int(sys.argv[3]), mem_gb=int(sys.argv[4]))
        ex = executor(folder, **kw)
        try:
            job = ex.submit(hello, 1)
            t(f"submitted {job.job_id}; waiting 20 s", t0)
            time.sleep(20)
            t(f"state {job.state}", t0)
            subprocess.run(["squeue", "-j", job.job_id, "-o", "%i %T %r"])
            subprocess.run(["scancel", job.job_id])
        except Exception as e:
            t(f"submit raised {type(e).__module__}.{type(e).__name__}: {e!s}", t0)
    elif mode == "fail":
        ex = executor(folder)
        job = ex.submit(boom)
        try:
            job.result()
        except Exception as e:
            t(f"result raised {type(e).__module__}.{type(e).__name__}:\n{e!s}", t0)
        t(f"state {job.state}; exception() -> {type(job.exception()).__name__}", t0)
    elif mode in ("cancel", "sigterm"):
        # USR2 well after the probe (default signal_delay_s=90 > the 1 min limit sends USR2 at once)
        ex = executor(folder, slurm_signal_delay_s=5)
        job = ex.submit(sleeper, 20)
        while job.state not in ("RUNNING",):
            time.sleep(0.5)
        time.sleep(3)
        cmd = ["scancel", job.job_id] + (["--signal=TERM"] if mode == "sigterm" else [])
        cmd += os.environ.get("PROBE_SCANCEL_EXTRA", "").split()
        t(f"running; {' '.join(cmd)}", t0)
        subprocess.run(cmd, check=True)
        try:
            res = job.result()
            t(f"result {res!r} state {job.state}", t0)
        except Exception as e:
            t(f"result raised {type(e).__module__}.{type(e).__name__}:\n{e!s}", t0)
        t(f"final state {job.state}", t0)
    elif mode in ("timeout_ckpt", "timeout_plain"):
        delay = int(os.environ.get("PROBE_SIGNAL_DELAY", "30"))
        ex = executor(folder, slurm_signal_delay_s=delay, max_num_timeout=1)
        fn = Ticker() if mode == "timeout_ckpt" else sleeper
        job = ex.submit(fn, 1000)
        t(f"submitted {job.job_id} (USR2@{delay}, max_num_timeout=1)", t0)
        last = None
        while not job.done():
            st = job.watcher.get_state(job.job_id, mode="force")
            if st != last:
                t(f"state {st}", t0)
                last = st
            time.sleep(1)
        try:
            res = job.result()
            t(f"result {res!r}", t0)
        except Exception as e:
            t(f"result raised {type(e).__module__}.{type(e).__name__}:\n{e!s}", t0)
        t(f"final state {job.state}", t0)
    elif mode == "nodb_cancel":
        # run with slurmdbd stopped: sacct fails, so submitit cannot learn the job was cancelled
        ex = executor(folder, slurm_signal_delay_s=5)
        job = ex.submit(sleeper, 20)
        t(f"submitted {job.job_id}", t0)
        time.sleep(5)
        subprocess.run(["scancel", job.job_id], check=True)
        t("scancel sent", t0)
        limit = float(os.environ.get("PROBE_WAIT", "90"))
        while not job.done() and time.time() - t0 < limit:
            time.sleep(1)
        t(f"done()={job.done()} state={job.state} watcher calls={job.watcher.num_calls}", t0)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
