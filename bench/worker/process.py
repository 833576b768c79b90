"""The worker under test: its frozen rules, its configuration and process (a subprocess, or
this script re-executed in-process for profiles, traces and prototypes), and what /proc and
/metrics say about it."""

from __future__ import annotations

import contextlib
import cProfile
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.worker import common
from bench.worker.common import PARTITIONS, PREFIX, ROOT, SCRIPT, VENV_BIN, free_port, log

# The side-by-side workload: shell then C2 within 2 min, >= 5 sensitive reads in 1 min.
TWO_RULES = """
- correlation: Shell then C2
  type: sequence
  by: [container.id]
  within: 2m
  steps:
    - {name: shell, condition: rule = "Terminal shell in container"}
    - {name: c2, condition: rule = "Outbound Connection to C2 Servers"}
  severity: Critical
  output: "shell then C2 in {{ key['container.id'] }}"
- correlation: Sensitive reads
  type: count
  by: [container.id]
  condition: rule = "Read sensitive file untrusted"
  threshold: 5
  within: 1m
  severity: Warning
  output: "{{ count }} sensitive reads in {{ key['container.id'] }}"
"""


def snapshot_rules(workdir: Path, source: str) -> Path:
    """A frozen copy of the rules, so an edit of rules/ during the run reloads nothing.

    `source` is a directory, or `git:REV` for the rules/ committed at REV.
    """
    target = workdir / "rules"
    if source == "two-rule":
        target.mkdir()
        (target / "two.yaml").write_text(TWO_RULES)
    elif source.startswith("git:"):
        target.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", source[4:], "rules/"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    else:
        shutil.copytree(source, target)
    return target


# --------------------------------------------------------------------------------------------
# the worker


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    app_id: str
    log_path: Path
    data_dir: Path
    started: float = field(default_factory=time.monotonic)

    def metrics(self) -> dict[str, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        totals: dict[str, float] = defaultdict(float)
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if 'stage="ingest"' in name:
                base += ":ingest"
            elif 'stage="correlate"' in name:
                base += ":correlate"
            totals[base] += float(value)
        return totals

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_worker(
    bootstrap: str,
    run_id: str,
    tag: str,
    events_topic: str,
    incidents_topic: str,
    store: str,
    lateness: str,
    workdir: Path,
    profile_out: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Worker:
    app_id = f"{PREFIX}{run_id}-{tag}"
    port = free_port()
    data_dir = workdir / f"data-{tag}"
    config = {
        "kafka": {"bootstrap_servers": bootstrap},
        "topics": {
            "events": events_topic,
            "incidents": incidents_topic,
            "dead_letter": f"{app_id}-dlq",
            "notify_dead_letter": f"{app_id}-notify-dlq",
            "partitions": PARTITIONS,
        },
        "app": {
            "id": app_id,
            "rules": [str(common.RULES)],
            "lateness": lateness,
            "store": store,
            "data_dir": str(data_dir),
            "web_port": port,
            "log_level": "INFO",
            "log_format": "console",
        },
    }
    cfg_path = workdir / f"worker-{tag}.yaml"
    cfg_path.write_bytes(orjson.dumps(config))  # JSON is YAML
    log_path = workdir / f"worker-{tag}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FC_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.update(extra_env or {})
    if profile_out is not None:
        env["FC_BENCH_PROFILE"] = str(profile_out)
    if profile_out is None and not extra_env:
        cmd = [str(VENV_BIN / "falco-correlator"), "worker", "--config", str(cfg_path)]
    else:
        cmd = [sys.executable, str(SCRIPT), "--inproc-worker", str(cfg_path)]
    handle = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    return Worker(proc, port, app_id, log_path, data_dir)


def install_trace() -> None:
    """Time the awaits where the worker can stall (FC_BENCH_TRACE=1); printed at exit."""
    import atexit
    from collections import Counter

    from faust.topics import Topic
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer
    from mode.utils.queues import FlowControlQueue

    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    started = time.perf_counter()

    def timed(cls: Any, name: str, label: str, only_if: Any = None, count: Any = None) -> None:
        original = getattr(cls, name)

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if only_if is not None and not only_if(self):
                return await original(self, *args, **kwargs)
            t0 = time.perf_counter()
            result = None
            try:
                result = await original(self, *args, **kwargs)
                return result
            finally:
                spent[label] += time.perf_counter() - t0
                calls[label] += 1
                if count is not None and result is not None:
                    calls[label + " (items)"] += count(result)

        setattr(cls, name, wrapper)

    timed(Consumer, "_commit_tps", "consumer commit (incl. producer flush)")
    timed(
        Consumer,
        "_wait_next_records",
        "drain loop waits for fetched records",
        count=lambda r: sum(len(v) for v in (r[0] or {}).values()),
    )
    timed(ProducerBuffer, "flush_atmost", "producer buffer full: flush_atmost")
    from faust.channels import Channel

    original_anext = Channel.__anext__

    async def anext(self: Any) -> Any:
        queue = self.queue
        label = f"agent on {getattr(self, 'topics', ['?'])[0]} waits on an empty stream queue"
        calls[label.replace("waits on", "reads") + " (all reads)"] += 1
        if not queue.empty():
            return await original_anext(self)
        t0 = time.perf_counter()
        try:
            return await original_anext(self)
        finally:
            spent[label] += time.perf_counter() - t0
            calls[label] += 1

    Channel.__anext__ = anext  # type: ignore[method-assign]
    del FlowControlQueue
    timed(Topic, "send", "agent awaits topic.send")

    def report() -> None:
        wall = time.perf_counter() - started
        lines = [f"FCBENCH-TRACE wall {wall:.1f}s since start"]
        for label, n in calls.items():
            if label.endswith("(all reads)"):
                lines.append(f"FCBENCH-TRACE {label}: {n}")
        for label, total in spent.most_common():
            items = calls.get(label + " (items)")
            extra = f", {items} items" if items else ""
            lines.append(f"FCBENCH-TRACE {label}: {total:.2f}s in {calls[label]} calls{extra}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    atexit.register(report)


def inproc_worker(config_path: str) -> int:
    """The worker in this process: FC_BENCH_PROFILE=<file> profiles it with cProfile,
    FC_BENCH_TRACE=1 times its stalls, FC_BENCH_APP=<file.py> swaps in a prototype build_app
    (a copy of streams/runtime/app.py kept outside the repo: `build_app(parts: WorkerParts)`,
    called by streams/runtime/assembly.py)."""
    import streams.runtime.app as app_module
    from streams.runtime.cli import run_worker

    proto = os.environ.get("FC_BENCH_APP")
    if proto:
        import importlib.util

        spec = importlib.util.spec_from_file_location("fc_bench_proto_app", proto)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        app_module.build_app = module.build_app  # type: ignore[attr-defined]
    if os.environ.get("FC_BENCH_TRACE"):
        install_trace()
    out = os.environ.get("FC_BENCH_PROFILE")
    if not out:
        return run_worker(config_path=config_path, rules=None)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return run_worker(config_path=config_path, rules=None)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def thread_cpu_seconds(pid: int) -> list[float]:
    """CPU seconds of each thread of `pid`, the main thread first."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = []
    with contextlib.suppress(OSError):
        for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out.append((int(fields[11]) + int(fields[12])) / ticks)
    return out


def log_warnings(path: Path, limit: int = 12) -> None:
    seen: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if " WARNING " in line or " ERROR " in line:
                text = line.split(": ", 1)[-1][:120]
                seen[text] = seen.get(text, 0) + 1
    for text, n in sorted(seen.items(), key=lambda kv: -kv[1])[:limit]:
        log(f"  worker log x{n}: {text}")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
