#!/usr/bin/env python3
"""The Messenger peer row (issue 14): Symfony's own worker against the agent, same app, same backlog.

The Symfony app of tests/apps/symfony (prod, cached container, OPcache on) publishes a backlog
through its own bus (Messenger's AMQP transport). Then either `bin/console messenger:consume`
with W worker processes, or the agent (release build) -> php-fpm -> the app's front controller ->
the same bus and handler, drains it. msg/s = messages / (consumers start -> the handler's last
record); CPU per message from /proc/stat over the same window (the whole machine) and from the
processes involved (consumers, php-fpm, RabbitMQ). Run by `scripts/bench --messenger`.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.join(ROOT, "bench", "messenger")
TICK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-signing-secret-0123456789"
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"


def log(msg):
    print(f"[messenger-bench] {msg}", file=sys.stderr, flush=True)


def machine_jiffies():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def proc_cpu(pid):
    """utime + stime of pid in seconds (0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / TICK
    except OSError:
        return 0.0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def rabbit_pids():
    out = subprocess.run(["pgrep", "-x", "beam.smp"], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="amqp-agent-msgbench-")
        # The app with the repository's PHP packages, same layout (its autoload.php is relative).
        shutil.copytree(os.path.join(ROOT, "php"), os.path.join(self.dir, "php"))
        self.app = os.path.join(self.dir, "tests", "apps", "symfony")
        shutil.copytree(os.path.join(ROOT, "tests", "apps", "symfony"), self.app)
        # Variant index-debug: the same front controller with the kernel in debug mode, which
        # checks every cached resource's freshness on each boot (what `debug = false` and
        # `cache:warmup` at deploy spare an app: "a cached container").
        with open(os.path.join(self.app, "public", "index.php")) as f:
            index = f.read()
        assert "new Kernel('prod', false)" in index, "public/index.php no longer builds Kernel('prod', false)"
        with open(os.path.join(self.app, "public", "index-debug.php"), "w") as f:
            f.write(index.replace("new Kernel('prod', false)", "new Kernel('prod', true)"))
        self.records = os.path.join(self.dir, "records")
        os.mkdir(self.records)
        self.run_no = 0
        self.rabbit = rabbit_pids()

    def env(self, run):
        q = self.queues(run)
        env = dict(os.environ)
        env.update(
            # Consumers read both queues from the one transport they run (publishing ignores it).
            AGENT_AMQP_DSN=f"{AMQP}/agent?queues[{q[0]}][flags]=2&queues[{q[1]}][flags]=2",
            AGENT_EVENT_QUEUE=q[0],
            AGENT_COMMAND_QUEUE=q[1],
            RECORD_DIR=self.records,
            AGENT_SIGNING_SECRET=SECRET,
            AGENT_SIGNATURE_ALLOW_V1="1",
            TRIVIAL_APP=self.app,
        )
        return env

    @staticmethod
    def queues(run):
        return [f"msgbench_{os.getpid()}_{run}_event", f"msgbench_{os.getpid()}_{run}_command"]

    def php(self, script, *args, env=None, check=True):
        cmd = ["php", "-d", "opcache.enable_cli=1", script, *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check).stdout

    def chores(self, verb, queues):
        self.php(os.path.join(HERE, "queues.php"), verb, *queues)

    def record_file(self, run):
        return os.path.join(self.records, f"symfony-{run}.jsonl")

    def count(self, run):
        try:
            with open(self.record_file(run), "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0

    def backlog(self, n):
        """Fresh queues holding n Messenger-published messages (half events, half commands)."""
        self.run_no += 1
        run = f"r{self.run_no}"
        env = self.env(run)
        q = self.queues(run)
        self.chores("declare", q)
        start = time.monotonic()
        out = self.php(os.path.join(self.app, "bin", "publish.php"), run, str(n // 2), str(n - n // 2), env=env)
        rate = n / (time.monotonic() - start)
        assert "published" in out, out
        return run, env, rate

    def wait_drained(self, run, n, procs, deadline_s):
        deadline = time.monotonic() + deadline_s
        seen, progress = 0, time.monotonic()
        while (c := self.count(run)) < n:
            if c > seen:
                seen, progress = c, time.monotonic()
            elif time.monotonic() - progress > 30:
                raise RuntimeError(f"stalled at {c} of {n} handled for 30 s")
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[:3]} exited with {p.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count(run)} of {n} handled in {deadline_s} s")
            time.sleep(0.005)
        return time.monotonic()

    def verify(self, run, n):
        ids = []
        with open(self.record_file(run)) as f:
            for line in f:
                i = line.find('"id":"')
                ids.append(line[i + 6 : line.index('"', i + 6)])
        return n - len(set(ids)), len(ids) - len(set(ids))

    # --- the two consumers -------------------------------------------------------------------

    def messenger(self, workers, trivial=False):
        n = self.args.messages
        run, env, pub = self.backlog(n)
        r0 = sum(proc_cpu(p) for p in self.rabbit)
        b0, t0j = machine_jiffies()
        load0 = loadavg()
        start = time.monotonic()
        if trivial:
            cmd = [os.path.join(HERE, "trivial-worker.php")]
        else:
            cmd = [os.path.join(self.app, "bin", "console"), "messenger:consume", "agent_events", "--no-interaction", "-q"]
        procs = [
            subprocess.Popen(
                ["php", "-d", "opcache.enable_cli=1", *cmd],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(workers)
        ]
        end = self.wait_drained(run, n, procs, self.args.timeout)
        b1, t1j = machine_jiffies()
        own = sum(proc_cpu(p.pid) for p in procs)
        rabbit = sum(proc_cpu(p) for p in self.rabbit) - r0
        load1 = loadavg()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        left = self.php(os.path.join(HERE, "queues.php"), "count", *self.queues(run))
        self.chores("delete", self.queues(run))
        lost, dup = self.verify(run, n)
        return dict(
            label=f"trivial: Messenger Worker × {workers}" if trivial else f"messenger:consume × {workers}",
            rate=n / (end - start),
            machine=(b1 - b0) / TICK / n * 1e6,
            machine_share=(b1 - b0) / max(1, t1j - t0j),
            consumer=own / n * 1e6,
            fpm=0.0,
            rabbit=rabbit / n * 1e6,
            load=(load0, load1),
            lost=lost,
            dup=dup,
            left=sum(int(l.split()[1]) for l in left.split("\n") if l),
            publish=pub,
        )

    def fpm_start(self, env, children, preload_list=None, prepend=None, opcache=True):
        d = tempfile.mkdtemp(prefix="fpm-", dir=self.dir)
        sock = os.path.join(d, "fpm.sock")
        root = os.geteuid() == 0
        conf = [
            "[global]",
            f"pid = {d}/fpm.pid",
            f"error_log = {d}/fpm.log",
            "daemonize = no",
            "[bench]",
            *(["user = root", "group = root"] if root else []),
            f"listen = {sock}",
            "listen.mode = 0666",
            "pm = static",
            f"pm.max_children = {children}",
            "pm.max_requests = 0",
            "clear_env = no",
            "catch_workers_output = yes",
            f"php_admin_value[error_log] = {d}/php.log",
            "php_admin_flag[log_errors] = on",
        ]
        if not opcache:
            conf.append("php_admin_flag[opcache.enable] = off")
        if prepend:
            conf.append(f"php_admin_value[auto_prepend_file] = {prepend}")
        with open(os.path.join(d, "fpm.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        cmd = [self.args.fpm_bin, "--nodaemonize", "--fpm-config", os.path.join(d, "fpm.conf")]
        if preload_list:
            cmd += ["-d", f"opcache.preload={HERE}/preload.php"]
            if root:
                cmd += ["-d", "opcache.preload_user=root"]
        if root:
            cmd.append("-R")
        env = dict(env, PRELOAD_APP=self.app, PRELOAD_LIST=preload_list or "")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(children_of(proc.pid)) < children or not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"php-fpm did not start; see {d}/fpm.log")
            time.sleep(0.02)
        return proc, sock, d

    def agent(self, pool, script="index.php", opcache=True, preload=False, batch=1):
        n = self.args.messages
        front = script if os.path.isabs(script) else os.path.join(self.app, "public", script)
        preload_list = self.class_list(front) if preload else None
        run, env, pub = self.backlog(n)
        fpm, sock, d = self.fpm_start(env, pool * 2, preload_list=preload_list, opcache=opcache)
        try:
            cfg = self.agent_toml(run, sock, front, pool, d, batch)
            r0 = sum(proc_cpu(p) for p in self.rabbit)
            f0 = fpm_cpu(fpm.pid)
            b0, t0j = machine_jiffies()
            load0 = loadavg()
            start = time.monotonic()
            agent = subprocess.Popen(
                [self.args.agent_bin, "run", "--config", cfg],
                env=dict(env, RUST_LOG="warn"),
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(d, "agent.log"), "w"),
            )
            end = self.wait_drained(run, n, [agent, fpm], self.args.timeout)
            b1, t1j = machine_jiffies()
            own = proc_cpu(agent.pid)
            fcpu = fpm_cpu(fpm.pid) - f0
            rabbit = sum(proc_cpu(p) for p in self.rabbit) - r0
            load1 = loadavg()
            agent.send_signal(signal.SIGTERM)
            rc = agent.wait(60)
        finally:
            fpm.send_signal(signal.SIGQUIT)
            fpm.wait(30)
        q = self.queues(run)
        left = self.php(os.path.join(HERE, "queues.php"), "count", *q, *[f"{x}.dead" for x in q])
        self.chores("delete", [*q, *[f"{x}.dead" for x in q], *[f"{x}.retry.1000ms" for x in q]])
        lost, dup = self.verify(run, n)
        label = f"agent pool {pool}+{pool} → php-fpm ({2 * pool}) → " + (
            f"trivial: {os.path.basename(front)}" if os.path.isabs(script) else f"public/{script}"
        )
        if not opcache:
            label += ", OPcache off"
        if preload:
            label += ", preloaded"
        if batch == "auto" or batch > 1:
            label += f", batch_max {batch}"
        return dict(
            label=label,
            rate=n / (end - start),
            machine=(b1 - b0) / TICK / n * 1e6,
            machine_share=(b1 - b0) / max(1, t1j - t0j),
            consumer=own / n * 1e6,
            fpm=fcpu / n * 1e6,
            rabbit=rabbit / n * 1e6,
            load=(load0, load1),
            lost=lost,
            dup=dup,
            left=sum(int(l.split()[1]) for l in left.split("\n") if l) + (0 if rc == 0 else 10**9),
            publish=pub,
        )

    def agent_toml(self, run, sock, front, pool, d, batch=1):
        q = self.queues(run)
        # batch_max > 1 (docs/batches.md): up to that many messages per request; batch_wait 0,
        # the backlog is prefetched.
        # "auto" (docs/batches.md): each request sized from the backlog and measured costs.
        if batch == "auto":
            batch_line = 'batch_max = "auto"\n'
        else:
            batch_line = f"batch_max = {batch}\n" if batch > 1 else ""
        text = f"""[amqp]
url = "{AMQP}"

[fpm]
address = "unix:{sock}"
script_filename = "{front}"
request_uri = "/_agent/messages/{{subject}}"
timeout = "30s"
signing_secrets = ["{SECRET}"]

[retry]
delays = ["1s"]

[subjects.event]
queue = "{q[0]}"
pool_size = {pool}
{batch_line}
[subjects.command]
queue = "{q[1]}"
pool_size = {pool}
{batch_line}
[admin]
listen = ""
"""
        path = os.path.join(d, f"agent-{run}.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def class_list(self, front):
        """The files one request of `front` declares classes from, from a short drain."""
        out = os.path.join(self.dir, f"classes-{os.path.basename(front)}.txt")
        if os.path.exists(out):
            return out
        run, env, _ = self.backlog(200)
        fpm, sock, d = self.fpm_start(dict(env, CLASSLIST_OUT=out), 2, prepend=os.path.join(HERE, "classlist.php"))
        try:
            cfg = self.agent_toml(run, sock, front, 1, d)
            agent = subprocess.Popen(
                [self.args.agent_bin, "run", "--config", cfg],
                env=dict(env, RUST_LOG="warn"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.wait_drained(run, 200, [agent], 120)
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        finally:
            fpm.send_signal(signal.SIGQUIT)
            fpm.wait(30)
        q = self.queues(run)
        self.chores("delete", [*q, *[f"{x}.dead" for x in q], *[f"{x}.retry.1000ms" for x in q]])
        with open(out) as f:
            files = [l for l in f.read().split("\n") if l]
        # The container is loaded by the kernel's own cache file; preloading it twice fails.
        with open(out, "w") as f:
            f.write("\n".join(x for x in files if "/cache/prod/" not in x) + "\n")
        return out


def children_of(pid):
    return children(pid)


def fpm_cpu(master):
    """CPU of the php-fpm master and its live children, in seconds."""
    return proc_cpu(master) + sum(proc_cpu(c) for c in children(master))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", default="2,4,8", help="messenger:consume process counts")
    ap.add_argument("--pools", default="1,2,4", help="agent pool sizes per subject (FPM children = 2 × pool)")
    ap.add_argument(
        "--variants",
        default="index,agent,index-preload,agent-preload,index-debug,index-noopcache",
        help="agent-path variants at the best pool: front controller (index | agent), -preload, -noopcache, "
        "-debug (kernel debug = true: no trusted cached container)",
    )
    ap.add_argument(
        "--batches",
        default="1",
        help='batch_max values of the agent rows (docs/batches.md), e.g. 1,10,50,auto; 1 is one request per message, "auto" sizes each request',
    )
    ap.add_argument("--trivial", action="store_true", help="also the trivial-handler pair (no kernel)")
    ap.add_argument("--only-trivial", action="store_true", help="only the trivial-handler pair")
    ap.add_argument("--skip-peer", action="store_true", help="only the agent-path variants")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--agent-bin", default=os.path.join(ROOT, "target", "release", "amqp-agent"))
    ap.add_argument("--fpm-bin", default=os.environ.get("PHP_FPM_BIN", "php-fpm8.2"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    b = Bench(args)
    log(f"work dir {b.dir}; {args.messages} messages per run, {args.rounds} round(s)")
    # Warm the app's container cache (prod) so that no run pays its compilation.
    b.php(os.path.join(b.app, "bin", "console"), "cache:warmup", env=b.env("warmup"))
    results = []

    def record(r, rnd, group, side, batch=1):
        r.update(round=rnd, group=group, side=side, batch=batch)
        results.append(r)
        log(
            f"{r['label']}: {r['rate']:.0f} msg/s, machine {r['machine']:.0f} µs/msg "
            f"({100 * r['machine_share']:.0f} % busy), consumers {r['consumer']:.0f} + fpm {r['fpm']:.0f} "
            f"+ rabbitmq {r['rabbit']:.0f} µs/msg, load {r['load'][0]:.1f}→{r['load'][1]:.1f}, "
            f"lost/dup {r['lost']}/{r['dup']}, left {r['left']}, published at {r['publish']:.0f} msg/s"
        )

    try:
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}")
            if args.trivial or args.only_trivial:
                for w in [int(x) for x in args.workers.split(",")]:
                    record(b.messenger(w, trivial=True), rnd, "trivial", "peer")
                for p in [int(x) for x in args.pools.split(",")]:
                    for batch in batch_values(args.batches):
                        record(b.agent(p, os.path.join(HERE, "trivial-front.php"), batch=batch), rnd, "trivial", "agent", batch)
            if args.only_trivial:
                continue
            if not args.skip_peer:
                for w in [int(x) for x in args.workers.split(",")]:
                    record(b.messenger(w), rnd, "kernel", "peer")
            for p in [int(x) for x in args.pools.split(",")]:
                for batch in batch_values(args.batches):
                    record(b.agent(p, batch=batch), rnd, "kernel", "agent", batch)
        if args.only_trivial:
            return
        best_pool = max(
            (int(p) for p in args.pools.split(",")),
            key=lambda p: statistics.median(
                r["rate"]
                for r in results
                if r["label"].startswith(f"agent pool {p}+") and r["label"].endswith("public/index.php")
            ),
        )
        log(f"variants at pool {best_pool}+{best_pool}")
        for rnd in range(args.rounds):
            for v in [x for x in args.variants.split(",") if x and x != "index"]:
                script = "agent.php" if v.startswith("agent") else "index-debug.php" if "debug" in v else "index.php"
                record(b.agent(best_pool, script, opcache="noopcache" not in v, preload="preload" in v), rnd, "kernel", f"variant {v}")
    finally:
        print("\n| Run | msg/s | machine CPU µs/msg (busy) | consumers | php-fpm | RabbitMQ | these processes | load avg | lost/dup/left |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['label']} | {r['rate']:.0f} | {r['machine']:.0f} ({100 * r['machine_share']:.0f} %) | "
                f"{r['consumer']:.0f} | {r['fpm']:.0f} | {r['rabbit']:.0f} | {r['consumer'] + r['fpm'] + r['rabbit']:.0f} | {r['load'][0]:.1f}→{r['load'][1]:.1f} | "
                f"{r['lost']}/{r['dup']}/{r['left']} |"
            )
        summary(results)
        if not args.keep:
            shutil.rmtree(b.dir, ignore_errors=True)
    bad = [r["label"] for r in results if r["lost"] or r["dup"] or r["left"]]
    if bad:
        sys.exit(f"FAILED: messages lost, duplicated or left behind in: {'; '.join(bad)}")


def summary(results):
    """Best of each side per round and handler: the agent's rows as a share of the peer's best."""
    rows = []
    for group, peer_name in (("kernel", "messenger:consume"), ("trivial", "Messenger Worker")):
        for rnd in sorted({r["round"] for r in results if r["group"] == group}):
            mine = [r for r in results if r["group"] == group and r["round"] == rnd]
            peers = [r for r in mine if r["side"] == "peer"]
            if not peers:
                continue
            best = max(peers, key=lambda r: r["rate"])
            rows.append((group, rnd, f"{peer_name} best: {best['label']}", best, None))
            sides = sorted({(r["side"], r["batch"]) for r in mine if r["side"] != "peer"}, key=str)
            for side, batch in sides:
                cands = [r for r in mine if r["side"] == side and r["batch"] == batch]
                top = max(cands, key=lambda r: r["rate"])
                rows.append((group, rnd, top["label"], top, best))
    if not rows:
        return
    print("\n| Handler | Round | Best of its kind | msg/s | × peer msg/s | machine CPU µs/msg | × peer CPU |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for group, rnd, label, r, peer in rows:
        ratio = f"{r['rate'] / peer['rate']:.2f}×" if peer else "—"
        cpu = f"{r['machine'] / peer['machine']:.2f}×" if peer else "—"
        print(f"| {group} | {rnd + 1} | {label} | {r['rate']:.0f} | {ratio} | {r['machine']:.0f} | {cpu} |")


def batch_values(text):
    """`--batches`: numbers, or "auto"."""
    return [x if x == "auto" else int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    main()
