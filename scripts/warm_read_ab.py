"""walletd CPU per warm balance read, as bench item 5 measures it (walletd on instant fake
wallet-rpc endpoints served by another process), for several source trees side by side: an A/B
of two commits without the whole bench (which needs monerod and runs every item).

python scripts/warm_read_ab.py --tree base=/path/to/worktree-a --tree new=/path/to/worktree-b \
    [--rounds R] [--seconds S] [--clients C ...] [--pyspy DIR]

The first tree's figures are the baseline of the printed ratios. `walletd/fake` (walletd's CPU
over the fake server's for the same requests) cancels part of a shared machine's speed changes:
the fake's work per request is the same in every window. --pyspy records each walletd with
py-spy (raw collapsed stacks, one file per tree).

Each tree gets its own fake monerod (tiny HTTP server), fake wallet-rpc server
(`python -m bench.fake_server` from that tree), and walletd process (from that tree), 10 escrows
adopted (warm sessions). Then windows of load (`bench.loadgen` from the first tree) alternate
A B B A ... and walletd's CPU time is read from /proc over each window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SESSIONS = 10
MONITOR = {"poll_interval": 1.0, "height_check": 0.25}
TICK = os.sysconf("SC_CLK_TCK")

FAKE_MONEROD = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers.get('content-length', 0))
        req = json.loads(self.rfile.read(n) or b'{}')
        if self.path == '/json_rpc':
            res = {"height": 1000, "status": "OK", "fee": 20000,
                   "fees": [20000, 80000, 320000, 4000000], "synchronized": True,
                   "busy_syncing": False, "target_height": 0, "nettype": "regtest"}
            body = {"jsonrpc": "2.0", "id": req.get("id", "0"), "result": res}
        else:
            body = {"status": "OK", "txs": []}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
s = ThreadingHTTPServer(('127.0.0.1', 0), H)
open(sys.argv[1], 'w').write(str(s.server_address[1]))
s.serve_forever()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args} did not start ({proc.returncode})")
        time.sleep(0.05)
    time.sleep(0.05)
    return path.read_text()


class Subject:
    def __init__(self, name: str, tree: Path, root: Path, wrap: list[str]) -> None:
        self.name, self.tree, self.root = name, tree, root
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.env = env
        root.mkdir(parents=True)
        port_file = root / "monerod.port"
        mon = self._popen([sys.executable, "-c", FAKE_MONEROD, str(port_file)])
        port = int(wait_file(port_file, mon))
        info_file = root / "fake.json"
        args = ["--sets", str(SESSIONS), "--endpoints", str(3 * SESSIONS), "--out", str(info_file)]
        fake = self._popen([sys.executable, "-m", "bench.fake_server", *args])
        self.info = json.loads(wait_file(info_file, fake))
        self.fake_pid = int(self.info["pid"])
        self.sock_dir = Path(tempfile.mkdtemp(prefix="wdp-", dir="/tmp"))
        self.socket = self.sock_dir / "w.sock"
        wallets = root / "wallets"
        wallets.mkdir(mode=0o700)
        for s in self.info["sets"]:
            for f in s["files"].values():
                (wallets / f"{f}.keys").write_bytes(b"fake")
        endpoints = [
            {"url": f"http://127.0.0.1:{p}", "user": "bench", "password": "bench"}
            for p in self.info["ports"]
        ]
        config = {
            "daemon": {"socket_path": str(self.socket), "state_dir": str(root / "state")},
            "monero": {
                "daemon_address": f"127.0.0.1:{port}",
                "wallet_dir": str(wallets),
                "wallet_rpc_endpoints": endpoints,
            },
            "log": {"level": "info", "format": "json"},
            "sessions": {"max_active": SESSIONS},
            "monitor": MONITOR,
        }
        lines = []
        for sec, vals in config.items():
            lines.append(f"[{sec}]")
            lines += [f"{k} = {toml(v)}" for k, v in vals.items()]
        cfg = root / "walletd.toml"
        cfg.write_text("\n".join(lines) + "\n")
        self.log = (root / "walletd.log").open("ab")
        self.walletd = self._popen(
            [*wrap, sys.executable, "-m", "walletd", "--config", str(cfg)], log=self.log
        )
        self.pid = self.walletd.pid
        self._wait_health()
        self._adopt()
        if wrap:  # the walletd process is the wrapper's child
            kids = [
                int(e)
                for e in os.listdir("/proc")
                if e.isdigit() and _ppid(int(e)) == self.walletd.pid
            ]
            self.pid = kids[0]

    def _popen(self, argv: list[str], log: object = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            argv,
            cwd=self.tree,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=log or None,
        )
        self.procs.append(p)
        return p

    def client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://walletd",
            timeout=60,
        )

    def _wait_health(self) -> None:
        deadline = time.monotonic() + 60
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.walletd.poll() is not None:
                    raise RuntimeError(f"walletd {self.name} exited")
                try:
                    c.get("/v1/health")
                    return
                except httpx.TransportError:
                    time.sleep(0.1)
        raise RuntimeError("walletd did not start")

    def _adopt(self) -> None:
        with self.client() as c:
            for i, s in enumerate(self.info["sets"]):
                body = {
                    "escrow_id": f"f{i}",
                    "amount": 10**12,
                    "wallets": {
                        r: {"file": f, "password": s["password"]} for r, f in s["files"].items()
                    },
                }
                r = c.post("/v1/escrows", json=body)
                assert r.status_code in (200, 201), r.text
            deadline = time.monotonic() + 120
            for i in range(len(self.info["sets"])):
                while True:
                    body = c.get(f"/v1/escrows/f{i}").json()
                    if body["funding"]["checked_at"] is not None:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("monitor never checked")
                    time.sleep(0.2)
            active = c.get("/v1/stats").json()["active_sessions"]
            assert active == SESSIONS, active

    def paths(self) -> list[str]:
        return [f"/v1/escrows/f{i}/balance" for i in range(SESSIONS)]

    def stop(self) -> None:
        if self.pid != self.walletd.pid:  # wrapped (py-spy): end walletd, the wrapper writes
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.walletd.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def window(
    s: Subject, loadgen_tree: Path, clients: int, seconds: float, work: Path, k: int
) -> dict[str, float]:
    warmup, delay = 1.0, 1.5
    start_at = time.time() + delay
    split = [clients] if clients == 1 else [clients - clients // 2, clients // 2]
    procs = []
    offset = 0
    for i, n in enumerate(split):
        out = work / f"{s.name}-{k}-{i}.json"
        args = [sys.executable, "-m", "bench.loadgen", "--socket", str(s.socket)]
        args += [a for p in s.paths() for a in ("--path", p)]
        args += ["--offset", str(offset), "--connections", str(n), "--start-at", repr(start_at)]
        args += ["--warmup", str(warmup), "--duration", str(seconds), "--out", str(out)]
        procs.append((subprocess.Popen(args, cwd=loadgen_tree), out))
        offset += n
    time.sleep(max(0.0, start_at + warmup - time.time()))
    w0, f0, t0 = cpu_seconds(s.pid), cpu_seconds(s.fake_pid), time.time()
    time.sleep(max(0.0, start_at + warmup + seconds - time.time()))
    w1, f1, t1 = cpu_seconds(s.pid), cpu_seconds(s.fake_pid), time.time()
    count = errors = 0
    for p, out in procs:
        assert p.wait(60) == 0
        r = json.loads(out.read_text())
        count += r["count"]
        errors += r["errors"]
    span = t1 - t0
    rps = count / seconds
    return {
        "rps": rps,
        "walletd_share": (w1 - w0) / span,
        "walletd_us_per_req": (w1 - w0) / span * 1e6 / rps if rps else 0.0,
        "fake_us_per_req": (f1 - f0) / span * 1e6 / rps if rps else 0.0,
        # walletd's CPU over the fake's for the same requests: the fake's work per request is
        # the same in every window, so this cancels part of the machine's speed changes.
        "walletd_per_fake": (w1 - w0) / (f1 - f0) if f1 > f0 else 0.0,
        "errors": errors,
    }


def idle_share(s: Subject, seconds: float) -> float:
    c0, t0 = cpu_seconds(s.pid), time.time()
    time.sleep(seconds)
    return (cpu_seconds(s.pid) - c0) / (time.time() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tree", action="append", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--clients", type=int, action="append")
    p.add_argument("--pyspy", type=Path, help="record walletd with py-spy into this dir")
    p.add_argument("--pyspy-bin", default="py-spy", help="e.g. from pip install --target DIR")
    p.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measurement")
    args = p.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    work = Path(tempfile.mkdtemp(prefix="warm-cpu-"))
    subjects: list[Subject] = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        for name, tree in trees:
            wrap: list[str] = []
            if args.pyspy:
                args.pyspy.mkdir(parents=True, exist_ok=True)
                out = args.pyspy / f"{name}.txt"
                wrap = [args.pyspy_bin, "record", "-r", "250", "-f", "raw", "-o", str(out), "--"]
            subjects.append(Subject(name, tree, work / name, wrap))
            print(f"{name}: walletd pid {subjects[-1].pid} ready", flush=True)
        time.sleep(2.0)
        for s in subjects:
            print(
                f"{s.name}: idle walletd CPU {idle_share(s, args.idle):.1%} of a core", flush=True
            )
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        k = 0
        for clients in args.clients or [50]:
            for r in range(args.rounds):
                # Rotate, so no subject always runs first, last or in the middle of a round.
                order = subjects[r % len(subjects) :] + subjects[: r % len(subjects)]
                if (r // len(subjects)) % 2:
                    order.reverse()
                for s in order:
                    res = window(s, trees[0][1], clients, args.seconds, work, k)
                    k += 1
                    results.setdefault((s.name, clients), []).append(res)
                    print(
                        f"  {s.name} x{clients}: {res['rps']:.0f} req/s, walletd "
                        f"{res['walletd_share']:.0%} -> {res['walletd_us_per_req']:.0f} us/req, "
                        f"fake {res['fake_us_per_req']:.0f} us/req, "
                        f"walletd/fake {res['walletd_per_fake']:.2f}, errors {res['errors']}, "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        print("\nmedians:")
        for (name, clients), rs in results.items():
            med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            print(
                f"{name} x{clients}: {med['rps']:.0f} req/s, "
                f"walletd {med['walletd_us_per_req']:.0f} us/req "
                f"(share {med['walletd_share']:.0%}), fake {med['fake_us_per_req']:.0f} us/req, "
                f"walletd/fake {med['walletd_per_fake']:.2f} n={len(rs)}"
            )
        names = [s.name for s in subjects]
        for clients in args.clients or [50]:
            base = results[(names[0], clients)]
            for other in names[1:]:
                for key in ("walletd_us_per_req", "walletd_per_fake"):
                    ratios = [
                        b[key] / a[key]
                        for a, b in zip(base, results[(other, clients)], strict=True)
                    ]
                    print(
                        f"x{clients} {other}/{names[0]} {key}: median ratio "
                        f"{statistics.median(ratios):.3f} (per round: "
                        + ", ".join(f"{x:.2f}" for x in ratios)
                        + ")"
                    )
        print(f"load average at end: {os.getloadavg()}")
    finally:
        for s in subjects:
            s.stop()
        print(f"work dir: {work}")


if __name__ == "__main__":
    main()
