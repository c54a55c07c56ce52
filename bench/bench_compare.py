#!/usr/bin/env python3
"""
bench_compare.py - the same SMTP load through mxgate and its peers, driven
by mxgate-load, in one run, with JSON results and PNG plots.

  compare   (make bench-compare) for each path, each session mode
            (persistent, a connection per message) and each connection
            count: mxgate-load client -> PATH -> mxgate-load sink.
            Paths: ceiling (the client straight into the sink), mxgate
            (relay-through), postfix (a private instance made by
            bench/postfix.sh: store and forward), haraka (from npm,
            queue/smtp_forward: relay-through).
  scale     (make bench-scale) mxgate alone with 1, 2, 4, ... workers up
            to the machine's CPUs, persistent sessions.

Each point: a warm-up (not measured), then MESSAGES messages or as many as
the client sends in SECONDS (a slow path's point ends in time); its time runs
from the client's start until the sink has counted every message (Postfix
acknowledges once a message is queued, so its time includes delivering the
queue; for the relay-through paths the two ends coincide). Server CPU is the
utime + stime of the server's whole process tree (mxgate; Postfix's master
and its children; Haraka's node) over the point, from /proc; the client's
and the sink's are reported apart. Latency is the client's: MAIL to the
final reply of each message, and connect to greeting.

Writes OUT/results.json and OUT/throughput.png, OUT/latency_cdf.png,
OUT/cpu_per_msg.png (compare) or OUT/scale.png (scale). A path that cannot
run here is reported as unavailable with the reason; nothing is made up.

Every server listens on 127.0.0.1 only and is stopped at the end; every run
is bounded (the client's --timeout, and a limit on the sink's count).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.path.join(ROOT, "build", "mxgate-load")
MXGATE = os.path.join(ROOT, "build", "mxgate")
HZ = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
PIPELINING = ["on"]   # --pipelining
LOAD_THREADS = [1]    # --load-threads: the client's and the sink's io_uring loops
# --pin: CPU sets (scale mode): the server's, and the client's and sink's
PIN = {"server": None, "load": None}


def pinned(which):
    """preexec_fn that keeps the process (and its threads) on PIN[which]."""
    cpus = PIN[which]
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def greets(port, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def tree_ticks(roots):
    """CPU ticks (utime+stime+cutime+cstime) of the process trees under roots."""
    kids, ticks = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        kids.setdefault(int(f[1]), []).append(int(d))
        ticks[int(d)] = sum(int(x) for x in f[11:15])
    total, todo = 0, [r for r in roots if r in ticks]
    while todo:
        p = todo.pop()
        total += ticks[p]
        todo.extend(kids.get(p, []))
    return total


def stop(proc, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Sink:
    """mxgate-load in sink mode, counting into a JSON file."""

    def __init__(self, work, name):
        self.port = free_port()
        self.count_file = os.path.join(work, "sink-%s.json" % name)
        self.proc = subprocess.Popen(
            [LOAD, "sink", "--listen", "%s:%d" % (HOST, self.port), "--count-file", self.count_file, "--quiet",
             "--threads", str(LOAD_THREADS[0])],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sink-%s.log" % name), "w"),
            preexec_fn=pinned("load"))
        if not greets(self.port, 10):
            raise RuntimeError("the sink did not start")

    def accepted(self):
        try:
            with open(self.count_file) as f:
                return int(json.load(f).get("messages_accepted", 0))
        except (OSError, ValueError):
            return 0

    def wait(self, target, limit):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.accepted() >= target:
                return time.monotonic()
            time.sleep(0.02)
        return None

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------- the servers

class Server:
    name = "?"
    roots = ()

    def start(self, work, sink_port):
        """The port it listens on; raises RuntimeError(reason) when it cannot run."""
        raise NotImplementedError

    def stop(self):
        pass


class Ceiling(Server):
    name = "ceiling"

    def start(self, work, sink_port):
        return sink_port


class Mxgate(Server):
    name = "mxgate"

    def __init__(self, workers):
        self.workers = workers
        self.proc = None

    def start(self, work, sink_port):
        port = free_port()
        binary = os.path.join(work, "mxgate")       # a private copy: a rebuild meanwhile does not matter
        shutil.copy(MXGATE, binary)
        self.proc = subprocess.Popen(
            [binary, "--listen", "%s:%d" % (HOST, port), "--workers", str(self.workers),
             "--downstream", "%s:%d" % (HOST, sink_port), "--relay-domains", "example.com",
             "--log-level", "warn", "--http-listen", "", "--max-connections-per-ip", "100000",
             "--downstream-connections", "16"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "mxgate.log"), "w"),
            preexec_fn=pinned("server"))
        self.roots = (self.proc.pid,)
        if not greets(port, 10):
            raise RuntimeError("mxgate did not start")
        return port

    def stop(self):
        stop(self.proc)


class Postfix(Server):
    name = "postfix"

    def __init__(self):
        self.dir = None

    def start(self, work, sink_port):
        for b in ("/usr/sbin/postfix", "/usr/sbin/postconf"):
            if not os.access(b, os.X_OK):
                raise RuntimeError(b + " not installed")
        port = free_port()
        self.dir = os.path.join(work, "pf")
        os.chmod(work, 0o755)
        script = ('POSTFIX=/usr/sbin/postfix POSTCONF=/usr/sbin/postconf work="$1"; . bench/postfix.sh; '
                  'postfix_setup "$2" "$3" "$4" "smtpd_client_connection_count_limit = 0" || '
                  '{ echo "$pf_why" >&2; exit 1; }')
        r = subprocess.run(["bash", "-c", script, "pf", work, self.dir, str(sink_port), str(port)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError("setup: " + (r.stderr.strip().splitlines() or ["?"])[-1])
        r = subprocess.run(["/usr/sbin/postfix", "-c", self.dir + "/etc", "start"], capture_output=True, text=True,
                           timeout=60)
        if r.returncode or not greets(port, 20):
            raise RuntimeError("did not start: " + r.stderr.strip()[-200:])
        with open(self.dir + "/queue/pid/master.pid") as f:
            self.roots = (int(f.read().strip()),)
        return port

    def stop(self):
        if self.dir:
            subprocess.run(["/usr/sbin/postfix", "-c", self.dir + "/etc", "stop"], capture_output=True, timeout=60)
            self.dir = None


class Haraka(Server):
    name = "haraka"

    def __init__(self, version, install_dir):
        self.version = version
        self.dir = install_dir
        self.proc = None

    def install(self, work):
        binary = os.path.join(self.dir, "node_modules", ".bin", "haraka")
        if os.access(binary, os.X_OK):
            return binary
        if not shutil.which("npm"):
            raise RuntimeError("npm not installed")
        os.makedirs(self.dir, exist_ok=True)
        pkg = os.path.join(self.dir, "package.json")
        if not os.path.exists(pkg):
            with open(pkg, "w") as f:
                f.write('{ "name": "mxgate-bench-haraka", "private": true }\n')
        log("installing Haraka@%s into %s (npm)" % (self.version, self.dir))
        r = subprocess.run(["npm", "install", "--prefix", self.dir, "--no-audit", "--no-fund",
                            "Haraka@" + self.version], capture_output=True, text=True, timeout=600)
        if r.returncode or not os.access(binary, os.X_OK):
            raise RuntimeError("npm install failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
        return binary

    def start(self, work, sink_port):
        binary = self.install(work)
        port = free_port()
        h = os.path.join(work, "haraka")
        shutil.copytree(os.path.join(self.dir, "node_modules", "Haraka", "config"), os.path.join(h, "config"))
        files = {
            "smtp.ini": "listen=%s:%d\nnodes=0\n" % (HOST, port),
            "plugins": "rcpt_to.in_host_list\nqueue/smtp_forward\n",
            "smtp_forward.ini": "host=%s\nport=%d\nenable_outbound=false\n" % (HOST, sink_port),
            "host_list": "example.com\n",
            "log.ini": "[main]\nlevel=warn\n",
            "me": "hk.bench\n",
        }
        for n, text in files.items():
            with open(os.path.join(h, "config", n), "w") as f:
                f.write(text)
        self.proc = subprocess.Popen([binary, "-c", h], stdout=open(os.path.join(work, "haraka.log"), "w"),
                                     stderr=subprocess.STDOUT)
        self.roots = (self.proc.pid,)
        if not greets(port, 30):
            raise RuntimeError("Haraka did not start")
        return port

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------- one point

def client(work, port, messages, seconds, conns, session, size, tag):
    """messages, or as many as go in `seconds` (a slow path's point ends in time)."""
    out = os.path.join(work, "client-%s.json" % tag)
    timeout = seconds * 2 + 30
    cmd = [LOAD, "client", "--target", "%s:%d" % (HOST, port), "--connections", str(conns),
           "--messages", str(messages), "--duration", str(seconds), "--session", session, "--size", str(size),
           "--timeout", str(timeout), "--pipelining", PIPELINING[0],
           "--json", out, "--quiet", "--run-id", tag, "--threads", str(LOAD_THREADS[0])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, preexec_fn=pinned("load"))
    try:
        with open(out) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = None
    return r.returncode, res, r.stderr.strip()[-300:]


def point(work, server, sink, port, messages, seconds, conns, session, size, warmup, drain_limit, tag):
    if warmup:
        base = sink.accepted()
        rc, res, err = client(work, port, warmup, 10, conns, session, size, tag + "-warm")
        if rc or not res:
            return {"error": "warm-up: client exited %d: %s" % (rc, err)}
        if sink.wait(base + int(res.get("messages_ok", 0)), drain_limit) is None:
            return {"error": "warm-up: the sink did not get every message"}
    roots = server.roots or (sink.proc.pid,)     # the ceiling: the sink is the server
    base = sink.accepted()
    c0 = tree_ticks(roots)
    s0 = tree_ticks((sink.proc.pid,))
    t0 = time.monotonic()
    rc, res, err = client(work, port, messages, seconds, conns, session, size, tag)
    if rc or not res:
        return {"error": "client exited %d: %s" % (rc, err)}
    ok = int(res.get("messages_ok", 0))
    t1 = sink.wait(base + ok, drain_limit)
    if t1 is None:
        return {"error": "the sink counted %d of %d within %d s" % (sink.accepted() - base, ok, drain_limit)}
    wall = max(t1 - t0, 1e-6)
    cpu = tree_ticks(roots) - c0
    sink_cpu = tree_ticks((sink.proc.pid,)) - s0
    return {
        "path": server.name, "session": session, "connections": conns, "messages": messages, "size": size,
        "ok": ok, "failed": int(res.get("messages_failed", 0)),
        "msgs_per_s": ok / wall, "wall_s": wall, "client_msgs_per_s": res.get("msgs_per_s"),
        "server_cpu_s": cpu / HZ, "server_cpu_ms_per_msg": cpu / HZ * 1000 / max(ok, 1),
        "sink_cpu_s": sink_cpu / HZ, "client_cpu_s_per_1000_msgs": res.get("cpu_s_per_1000_msgs"),
        "latency": res.get("latency"), "connect_to_greeting": res.get("connect_to_greeting"),
        "replies": res.get("replies"),
    }


def run_path(work, server, points, args):
    """Every point of one path against one sink and one server start."""
    d = os.path.join(work, server.name)
    os.makedirs(d, exist_ok=True)
    sink = Sink(d, server.name)
    out = []
    try:
        port = server.start(d, sink.port)
        for session, conns in points:
            tag = "%s-%s-%d" % (server.name, session, conns)
            msgs = args.messages if session == "persistent" else args.messages_per_message
            r = point(d, server, sink, port, msgs, args.seconds, conns, session, args.size, args.warmup,
                      args.drain_limit, tag)
            r.setdefault("path", server.name)
            r.setdefault("session", session)
            r.setdefault("connections", conns)
            if "error" in r:
                log("%s: %s" % (tag, r["error"]))
            else:
                lat = r["latency"] or {}
                log("%s: %.0f msgs/s, p50 %.2f ms, p99 %.2f ms, server cpu %.3f ms/msg" % (
                    tag, r["msgs_per_s"], lat.get("p50_us", 0) / 1000, lat.get("p99_us", 0) / 1000,
                    r["server_cpu_ms_per_msg"]))
            out.append(r)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log("%s: unavailable (%s)" % (server.name, e))
        out.append({"path": server.name, "unavailable": str(e)})
    finally:
        server.stop()
        sink.stop()
    return out


# ---------------------------------------------------------------- plots

def plots_compare(results, outdir, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (make deps installs python3-matplotlib): no plots")
        return []
    ok = [r for r in results if "msgs_per_s" in r]
    paths = [p for p in ("ceiling", "mxgate", "postfix", "haraka") if any(r["path"] == p for r in ok)]
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, session in zip(axes, ("persistent", "per-message")):
        for p in paths:
            pts = sorted((r["connections"], r["msgs_per_s"]) for r in ok if r["path"] == p and r["session"] == session)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("client connections")
        ax.set_ylabel("messages/s (until the sink has them)")
        ax.set_title("%s sessions" % session)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    files.append(os.path.join(outdir, "throughput.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = max((r["connections"] for r in ok if r["session"] == "persistent"), default=None)
    for p in paths:
        r = next((r for r in ok if r["path"] == p and r["session"] == "persistent" and r["connections"] == top), None)
        if not r or not r.get("latency"):
            continue
        cdf = r["latency"].get("cdf")
        if cdf:
            xs = [us / 1000 for _, us in cdf]
            ys = [q / 100 for q, _ in cdf]
        else:
            lat = r["latency"]
            pts = [(50, lat["p50_us"]), (90, lat["p90_us"]), (99, lat["p99_us"]), (99.9, lat["p999_us"]),
                   (100, lat["max_us"])]
            xs = [us / 1000 for _, us in pts]
            ys = [q / 100 for q, _ in pts]
        ax.plot(xs, ys, label=p)
    ax.set_xscale("log")
    ax.set_xlabel("MAIL to final reply, ms")
    ax.set_ylabel("fraction of messages")
    ax.set_title("latency, persistent sessions, %s connections" % top)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files.append(os.path.join(outdir, "latency_cdf.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    servers = [p for p in paths if p != "ceiling"]
    width = 0.38
    for i, session in enumerate(("persistent", "per-message")):
        vals = []
        for p in servers:
            rs = [r for r in ok if r["path"] == p and r["session"] == session]
            r = max(rs, key=lambda r: r["connections"]) if rs else None
            vals.append(r["server_cpu_ms_per_msg"] if r else 0)
        ax.bar([j + (i - 0.5) * width for j in range(len(servers))], vals, width, label=session)
    ax.set_xticks(range(len(servers)))
    ax.set_xticklabels(servers)
    ax.set_yscale("log")
    ax.set_ylabel("server CPU ms per message")
    ax.set_title("CPU per message (most connections)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files.append(os.path.join(outdir, "cpu_per_msg.png"))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def plot_scale(results, outdir, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return []
    ok = sorted((r["workers"], r["msgs_per_s"]) for r in results if "msgs_per_s" in r)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot([w for w, _ in ok], [m for _, m in ok], marker="o", label="mxgate")
    if ok:
        ax.plot([w for w, _ in ok], [ok[0][1] * w for w, _ in ok], linestyle=":", color="grey", label="linear")
    ax.set_xlabel("workers")
    ax.set_ylabel("messages/s")
    ax.set_xticks([w for w, _ in ok])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    f = os.path.join(outdir, "scale.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    return [f]


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": os.uname().release}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("compare", "scale"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--paths", default="ceiling mxgate postfix haraka")
    ap.add_argument("--connections", default="1 10 50")
    ap.add_argument("--sessions", default="persistent per-message")
    ap.add_argument("--messages", type=int, default=20000, help="per point, persistent sessions")
    ap.add_argument("--messages-per-message", type=int, default=10000, help="per point, a connection per message")
    ap.add_argument("--seconds", type=int, default=10, help="at most this long per point (slow paths)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--drain-limit", type=int, default=120)
    ap.add_argument("--workers", type=int, default=0, help="mxgate's workers (0: the CPUs)")
    ap.add_argument("--haraka-version", default=os.environ.get("HARAKA_VERSION", "3.3.4"))
    ap.add_argument("--haraka-dir", default=os.path.join(ROOT, "bench", ".haraka"))
    ap.add_argument("--pipelining", choices=("on", "off"), default="on",
                    help="the client pipelines MAIL, RCPT and DATA where offered (as Postfix's smtp client does)")
    ap.add_argument("--load-threads", type=int, default=1, help="io_uring loops of the client and of the sink")
    ap.add_argument("--pin", action="store_true",
                    help="scale: the client and sink on the upper half of the CPUs, mxgate with W workers on the "
                         "first W (or on all when W is more than half)")
    args = ap.parse_args()
    PIPELINING[0] = args.pipelining
    LOAD_THREADS[0] = args.load_threads
    for b in (LOAD, MXGATE):
        if not os.access(b, os.X_OK):
            sys.exit("bench: %s not built (make all)" % b)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mxgate-bench.")
    os.chmod(work, 0o755)                             # Postfix's unprivileged daemons live below it
    cpus = os.cpu_count() or 1
    results = []
    try:
        if args.mode == "compare":
            points = [(s, int(c)) for s in args.sessions.split() for c in args.connections.split()]
            make = {"ceiling": Ceiling, "mxgate": lambda: Mxgate(args.workers or cpus), "postfix": Postfix,
                    "haraka": lambda: Haraka(args.haraka_version, args.haraka_dir)}
            for p in args.paths.split():
                results += run_path(work, make[p](), points, args)
            doc = {"mode": "compare", "machine": machine(), "size": args.size, "results": results}
            title = "mxgate-load -> path -> mxgate-load sink, %d B messages, %d CPUs" % (args.size, cpus)
            files = plots_compare(results, args.out, title)
        else:
            ws, w = [], 1
            while w < cpus:
                ws.append(w)
                w *= 2
            ws.append(cpus)
            conns = int(args.connections.split()[-1])
            half = cpus // 2
            for w in ws:
                if args.pin and cpus >= 4:
                    PIN["load"] = set(range(half, cpus)) if w <= half else None
                    PIN["server"] = set(range(w)) if w <= half else None
                r = run_path(work, Mxgate(w), [("persistent", conns)], args)[0]
                r["workers"] = w
                r["pinned"] = bool(PIN["server"])
                results.append(r)
            doc = {"mode": "scale", "machine": machine(), "results": results}
            files = plot_scale(results, args.out, "mxgate messages/s by workers (%d CPUs)" % cpus)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(doc, f, indent=1)
        summary(doc)
        log("wrote %s" % ", ".join([os.path.join(args.out, "results.json")] + files))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(doc):
    rs = [r for r in doc["results"] if "msgs_per_s" in r]
    print("%-8s %-11s %5s %7s %10s %9s %9s %12s" % ("path", "session", "conns", "workers", "msgs/s", "p50 ms",
                                                     "p99 ms", "cpu ms/msg"))
    for r in rs:
        lat = r.get("latency") or {}
        print("%-8s %-11s %5d %7s %10.0f %9.2f %9.2f %12.4f" % (
            r["path"], r["session"], r["connections"], r.get("workers", "-"), r["msgs_per_s"],
            lat.get("p50_us", 0) / 1000, lat.get("p99_us", 0) / 1000,
            r["server_cpu_ms_per_msg"] if r["path"] != "ceiling" else 0))
    for r in doc["results"]:
        if "unavailable" in r:
            print("%s: unavailable (%s)" % (r["path"], r["unavailable"]))
    if doc["mode"] == "compare":
        # Ratios at the most connections both paths ran with, per session mode.
        def at(p, s, c):
            return next((r for r in rs if r["path"] == p and r["session"] == s and r["connections"] == c), None)
        for s in ("persistent", "per-message"):
            for peer in ("ceiling", "postfix", "haraka"):
                both = [r["connections"] for r in rs if r["path"] == "mxgate" and r["session"] == s
                        and at(peer, s, r["connections"])]
                if not both:
                    continue
                m, o = at("mxgate", s, max(both)), at(peer, s, max(both))
                if m and o:
                    print("mxgate_vs_%s_%s_throughput: %.3f" % (peer, s, m["msgs_per_s"] / o["msgs_per_s"]))
                    if peer != "ceiling":
                        print("mxgate_vs_%s_%s_cpu_per_msg: %.3f" % (
                            peer, s, o["server_cpu_ms_per_msg"] / max(m["server_cpu_ms_per_msg"], 1e-9)))


if __name__ == "__main__":
    main()
