# proc.py - process and sink helpers shared by bench/compare.sh and bench/tls.sh
# (CPU ticks of process trees, smtp-sink's counter, free ports, greetings).
import os, re, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)   # no traceback on Ctrl-C

def stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    f = s[s.rindex(")") + 2:].split()       # f[0] is field 3 (state)
    return int(f[1]), sum(int(x) for x in f[11:15])   # ppid, utime+stime+cutime+cstime

def tree(roots):
    kids, ticks = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid, t = stat(int(d))
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
            ticks[int(d)] = t
    out, todo = [], [r for r in roots if r in ticks]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out, ticks

def last_count(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 512))
            m = re.findall(rb"mesg=(\d+)\r", f.read())
            return int(m[-1]) if m else 0
    except OSError:
        return 0

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "ticks":          # ticks ROOT... : CPU ticks of the process trees
    pids, ticks = tree([int(a) for a in args])
    print(sum(ticks[p] for p in pids))
elif cmd == "tree":         # tree ROOT... : the PIDs of the process trees
    print(" ".join(str(p) for p in tree([int(a) for a in args])[0]))
elif cmd == "alive":        # alive PID... : those that exist and are not zombies
    alive = []
    for a in args:
        try:
            with open("/proc/%s/stat" % a) as f:
                s = f.read()
            if s[s.rindex(")") + 2] not in "ZX":
                alive.append(a)
        except (OSError, ValueError, IndexError):
            pass
    print(" ".join(alive))
elif cmd == "count":        # count FILE : smtp-sink's message counter
    print(last_count(args[0]))
elif cmd == "wait":         # wait FILE TARGET LIMIT : time when counter >= TARGET
    path, target, limit = args[0], int(args[1]), float(args[2])
    end = time.monotonic() + limit
    while True:
        n = last_count(path)
        if n >= target:
            print("%.6f %d" % (time.time(), n))
            sys.exit(0)
        if time.monotonic() > end:
            print("timeout %d" % n)
            sys.exit(1)
        time.sleep(0.01)
elif cmd == "port":         # port : a free TCP port on 127.0.0.1
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
elif cmd == "greet":        # greet PORT LIMIT : wait for a 220 greeting
    import socket
    port, limit = int(args[0]), float(args[1])
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(3)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    sys.exit(0)
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("port %d not greeting within %.0f s" % (port, limit))
