#!/usr/bin/env python3
"""SIP load benchmark of the standalone media node (driven by tests/bench/sip-load).

Two measurements, both against one `media-node` process started here on loopback ports that
were free when bind-tested:

1. Call rate: SIPp as the carrier (127.0.0.2, the trunk's allowed source) calls an entry-point
   number routed to seat 1002 (a SIPp UAS registered with digest) at increasing rates for a
   fixed time each; calls are answered and hung up after ~1 s, without media; recording off.
   Reported: the highest rate sustained (all calls offered at that rate) with zero failed
   calls, and the node's CPU seconds per call.
2. Concurrency: N calls ramped up and held for a fixed window with RTP both ways (the caller
   plays 20 ms A-law frames from a pcap, the seat echoes them) and recording on. Reported:
   the largest N held with under 0.1 % packet loss, RSS per call, recordings written.

Numbers, not assertions: the script exits 0 when it measured, whatever the numbers are.
Only the processes it starts are stopped (by pid); all traffic stays on 127.0.0.1/127.0.0.2.
Python standard library only.
"""

import argparse
import atexit
import csv
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parents[1]
PCAP_SOURCE = Path("/usr/share/sip-tester/g711a.pcap")
CARRIER_IP = "127.0.0.2"
NODE_IP = "127.0.0.1"
SEAT_IP = "127.0.0.1"
FRONT_DESK = "+4930555100"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# 20 ms A-law frames: 50 packets per second per direction per call.
FRAME_MS = 20
PACKETS_PER_SECOND = 1000 // FRAME_MS
# Stereo 16-bit 8 kHz WAV: bytes per second of call.
WAV_BYTES_PER_SECOND = 8000 * 2 * 2
LOSS_LIMIT = 0.001

CHILDREN = []  # every subprocess.Popen this script started


def log(msg):
    print(f"[sip-load {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes we own


def spawn(args, logfile, cwd, env=None):
    out = open(logfile, "ab")
    proc = subprocess.Popen(
        [str(a) for a in args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
    )
    out.close()
    CHILDREN.append(proc)
    return proc


def stop(proc, grace=5.0):
    """Stops one process we started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(5)


def wait_for(proc, limit):
    """Waits up to `limit` seconds; stops it if it has not finished by then."""
    try:
        return proc.wait(limit), False
    except subprocess.TimeoutExpired:
        return stop(proc), True


def cleanup():
    for proc in reversed(CHILDREN):
        if proc.poll() is None:
            stop(proc, 3.0)


def on_signal(signum, _frame):
    log(f"signal {signum}: stopping what this run started")
    cleanup()
    sys.exit(128 + signum)


# ---------------------------------------------------------------- ports


def _binds(ip, port, kind):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(ip, udp=True, tcp=False, span=1):
    """A port (and the `span - 1` above it) free on `ip` for the asked transports."""
    for _ in range(500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.bind((ip, 0))
        base = s.getsockname()[1]
        s.close()
        base -= base % 2
        if base + span > 65535:
            continue
        ok = all(
            (not udp or _binds(ip, p, socket.SOCK_DGRAM))
            and (not tcp or _binds(ip, p, socket.SOCK_STREAM))
            for p in range(base, base + span)
        )
        if ok:
            return base
    raise RuntimeError(f"no free port on {ip}")


def free_rtp_range(count):
    """`count` consecutive UDP ports free on the node's address, below the ephemeral range
    so SIPp's and the system's own sockets do not land in it mid-run."""
    low_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for base in range(10000, max(10001, low_eph - count), 1000):
        if all(_binds(NODE_IP, p, socket.SOCK_DGRAM) for p in range(base, base + count)):
            return base, base + count - 1
    raise RuntimeError(f"no {count} consecutive free UDP ports below {low_eph}")


# ---------------------------------------------------------------- measurements


def proc_cpu_seconds(pid):
    """utime + stime of a process (all threads)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_threads(pid):
    """{thread id: (name, cpu seconds)}."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[task.name] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def proc_rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def udp_sockets():
    """{(ip, port): drops} for every IPv4 UDP socket of this network namespace."""
    out = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        ip_hex, port_hex = f[1].split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
        out[(ip, int(port_hex, 16))] = int(f[-1])
    return out


def udp_snmp():
    lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines() if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def drops_delta(before, after, match):
    """Receive-buffer drops of the sockets alive at both samples whose (ip, port) match."""
    return sum(after[k] - before[k] for k in after if k in before and match(k))


class Metrics:
    def __init__(self, addr):
        self.url = f"http://{addr}/metrics"

    def sample(self):
        text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
        return out


def msum(sample, name, **labels):
    total = 0.0
    for (n, l), v in sample.items():
        if n == name and all(f'{k}="{val}"' in l for k, val in labels.items()):
            total += v
    return total


def outcomes(sample):
    """{outcome: count} from switchboard_calls_total."""
    out = {}
    for (n, l), v in sample.items():
        if n == "switchboard_calls_total":
            m = re.search(r'outcome="([^"]*)"', l)
            key = m.group(1) if m else l
            out[key] = out.get(key, 0) + v
    return out


def delta_dict(a, b):
    keys = set(a) | set(b)
    return {k: b.get(k, 0) - a.get(k, 0) for k in keys if b.get(k, 0) - a.get(k, 0)}


def sipp_stats(path):
    """Rows of a SIPp -trace_stat CSV as dicts (values as strings)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return []
    if len(rows) < 2:
        return []
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:] if len(r) >= len(head) - 1]


def stat_int(row, key):
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def stat_epoch(row, key):
    """SIPp time stamps look like `2026-11-22\t15:27:20.275367\t1795361240.275367`."""
    try:
        return float((row.get(key) or "0").split("\t")[-1])
    except ValueError:
        return 0.0


def creation_time(rows, total):
    """Seconds from SIPp's start until it had created `total` calls, interpolated between the
    one-second statistics rows (-fd 1); None if it never did."""
    prev_t, prev_c = None, 0
    for r in rows:
        t, c = stat_epoch(r, "CurrentTime"), stat_int(r, "TotalCallCreated")
        if prev_t is None:
            prev_t = stat_epoch(r, "StartTime")
        if c >= total:
            frac = (total - prev_c) / (c - prev_c) if c > prev_c else 1.0
            return prev_t + frac * (t - prev_t) - stat_epoch(r, "StartTime")
        prev_t, prev_c = t, c
    return None


def creation_rate(rows, total):
    """Calls per second SIPp really offered: from its first statistics row with calls created
    (leaving out its start-up) to when it had created `total`."""
    first = next((r for r in rows if stat_int(r, "TotalCallCreated") > 0), None)
    end = creation_time(rows, total)
    if first is None or end is None:
        return 0.0
    t_first = stat_epoch(first, "CurrentTime") - stat_epoch(first, "StartTime")
    c_first = stat_int(first, "TotalCallCreated")
    if end - t_first < 1.0:
        return total / end if end > 0 else 0.0
    return (total - c_first) / (end - t_first)


# ---------------------------------------------------------------- pcap


def make_pcap(out, seconds):
    """A pcap of 20 ms A-law RTP frames (50 packets/s) lasting `seconds`, with the audio of
    SIPp's sample g711a.pcap (30 ms frames) looped. SIPp rewrites addresses and ports."""
    data = PCAP_SOURCE.read_bytes()
    audio = bytearray()
    off = 24
    while off + 16 <= len(data):
        _ts, _us, incl, _orig = struct.unpack("<IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = frame[14:]
        udp = ip[(ip[0] & 15) * 4 :]
        rtp = udp[8:]
        if len(rtp) > 12 and rtp[1] & 0x7F == 8:
            cc = rtp[0] & 15
            audio += rtp[12 + 4 * cc :]
    if not audio:
        raise RuntimeError(f"no A-law audio in {PCAP_SOURCE}")
    frames = int(seconds * PACKETS_PER_SECOND)
    payload_len = 8000 * FRAME_MS // 1000
    body = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    pos = 0
    for i in range(frames):
        chunk = bytearray()
        while len(chunk) < payload_len:
            take = min(payload_len - len(chunk), len(audio) - pos)
            chunk += audio[pos : pos + take]
            pos = (pos + take) % len(audio)
        rtp = struct.pack(">BBHII", 0x80, 8 | (0x80 if i == 0 else 0), i & 0xFFFF, i * payload_len, 0x5B0A7D01) + chunk
        udp = struct.pack(">HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")) + udp
        eth = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00" + ip
        t = i * FRAME_MS * 1000
        body += struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(eth), len(eth)) + eth
    Path(out).write_bytes(body)
    return frames


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, opts, node_bin, work):
        self.opts = opts
        self.node_bin = node_bin
        self.work = work
        self.node = None
        self.phase = None
        self.log_notes = []

    # --- node

    def start_node(self, phase, record, rtp_range):
        self.phase = phase
        cfg = (BENCH / "center.yaml").read_text()
        cfg = re.sub(r"minPort: \d+", f"minPort: {rtp_range[0]}", cfg)
        cfg = re.sub(r"maxPort: \d+", f"maxPort: {rtp_range[1]}", cfg)
        cfg = re.sub(r"mode: Never", f"mode: {'Always' if record else 'Never'}", cfg)
        cfg_path = self.work / f"center-{phase}.yaml"
        cfg_path.write_text(cfg)
        self.sip_port = free_port(NODE_IP, udp=True, tcp=True)
        self.metrics_addr = f"{NODE_IP}:{free_port(NODE_IP, udp=False, tcp=True)}"
        control_addr = f"{NODE_IP}:{free_port(NODE_IP, udp=False, tcp=True)}"
        self.recordings = self.work / f"recordings-{phase}"
        self.recordings.mkdir(exist_ok=True)
        self.node_log = self.work / f"node-{phase}.log"
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.rust_log = env["RUST_LOG"]
        args = [self.node_bin, "--config", cfg_path, "--sip-listen", NODE_IP,
                "--sip-port", self.sip_port, "--metrics-listen", self.metrics_addr,
                "--control-listen", control_addr, "--recordings-dir", self.recordings]
        self.node_cmd = " ".join(str(a) for a in args)
        self.node = spawn(args, self.node_log, self.work, env)
        self.metrics = Metrics(self.metrics_addr)
        deadline = time.time() + 30
        while True:
            if self.node.poll() is not None:
                raise RuntimeError(f"media-node exited with {self.node.returncode}; see {self.node_log}")
            try:
                if urllib.request.urlopen(f"http://{self.metrics_addr}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"media-node not ready within 30 s; see {self.node_log}")
            time.sleep(0.2)
        self.uas_port = free_port(SEAT_IP)
        self.echo_port = free_port(SEAT_IP, span=4)
        self.uac_port = free_port(CARRIER_IP)
        self.caller_media_port = free_port(CARRIER_IP, span=4)
        log(f"{phase}: media-node pid {self.node.pid}, SIP udp/tcp {NODE_IP}:{self.sip_port}, "
            f"metrics {self.metrics_addr}, RTP {rtp_range[0]}-{rtp_range[1]}, "
            f"recording {'Always' if record else 'Never'}, RUST_LOG={self.rust_log}")
        time.sleep(0.5)
        self.idle_rss_kb = proc_rss_kb(self.node.pid)

    def stop_node(self):
        if self.node:
            stop(self.node, 10)
            self.node = None

    def node_log_summary(self):
        warn = err = 0
        kinds = {}
        try:
            for line in open(self.node_log, errors="replace"):
                if " WARN " in line or " ERROR " in line:
                    if " WARN " in line:
                        warn += 1
                    else:
                        err += 1
                    msg = re.sub(r"\x1b\[[0-9;]*m", "", line).split(": ", 1)[-1].strip()[:160]
                    msg = re.sub(r"\d+", "N", msg)
                    kinds[msg] = kinds.get(msg, 0) + 1
        except OSError:
            pass
        top = sorted(kinds.items(), key=lambda kv: -kv[1])[:5]
        return warn, err, top

    def timed_sample(self):
        """Metrics and the midpoint of the fetch, so counter deltas match the time between."""
        a = time.time()
        sample = self.metrics.sample()
        return sample, (a + time.time()) / 2

    def active_calls(self):
        return msum(self.metrics.sample(), "switchboard_calls_active")

    def wait_idle(self, limit):
        """Waits (bounded) until the node has no call up."""
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                if self.active_calls() == 0:
                    return True
            except OSError:
                pass
            time.sleep(0.5)
        return False

    # --- SIPp

    def sipp(self, name, scenario, args, timeout_s):
        stat = self.work / f"{name}.csv"
        errors = self.work / f"{name}-errors.log"
        full = ["sipp", *args, "-sf", BENCH / scenario, "-key", "domain", "localhost",
                "-timeout", f"{int(timeout_s)}s", "-nostdin", "-buff_size", "4194304",
                "-trace_stat", "-stf", stat, "-fd", "1",
                "-trace_err", "-error_file", errors]
        proc = spawn(full, self.work / f"{name}.out", self.work)
        proc.stat_file = stat
        proc.error_file = errors
        proc.label = name
        return proc

    def register_seat(self, tag):
        reg = self.sipp(f"{tag}-register", "register.xml",
                        [f"{NODE_IP}:{self.sip_port}", "-i", SEAT_IP, "-p", self.uas_port, "-m", "1"], 15)
        rc, killed = wait_for(reg, 25)
        if rc != 0 or killed:
            raise RuntimeError(f"seat 1002 could not register (sipp exit {rc}); see {self.work}/{tag}-register.out")

    def start_uas(self, tag, calls, timeout_s, echo):
        args = ["-i", SEAT_IP, "-p", self.uas_port, "-m", calls]
        if echo:
            args += ["-mi", SEAT_IP, "-mp", self.echo_port, "-rtp_echo"]
        uas = self.sipp(f"{tag}-uas", "uas.xml", args, timeout_s)
        time.sleep(0.5)
        if uas.poll() is not None:
            raise RuntimeError(f"the seat's SIPp UAS exited at once ({uas.returncode}); see {self.work}/{tag}-uas.out")
        return uas

    def error_lines(self, proc):
        try:
            return sum(1 for l in open(proc.error_file, errors="replace") if "unexpected" in l.lower())
        except OSError:
            return 0

    # --- call rate

    def rate_step(self, rate, duration):
        tag = f"rate-{rate}"
        total = rate * duration
        self.register_seat(tag)
        uas = self.start_uas(tag, total, duration + 90, echo=False)
        before = self.metrics.sample()
        udp0 = udp_sockets()
        snmp0 = udp_snmp()
        cpu0 = proc_cpu_seconds(self.node.pid)
        thr0 = proc_threads(self.node.pid)
        t0 = time.time()
        uac = self.sipp(f"{tag}-uac", "uac-short.xml",
                        [f"{NODE_IP}:{self.sip_port}", "-s", FRONT_DESK, "-i", CARRIER_IP,
                         "-p", self.uac_port, "-r", rate, "-rp", "1000", "-m", total,
                         "-l", rate * 3 + 50, "-d", "1000"], duration + 60)
        peak_active = 0
        max_rss = 0
        while uac.poll() is None and time.time() < t0 + duration + 75:
            try:
                peak_active = max(peak_active, self.active_calls())
            except OSError:
                pass
            max_rss = max(max_rss, proc_rss_kb(self.node.pid))
            time.sleep(1)
        uac_rc, uac_killed = wait_for(uac, 5)
        wall = time.time() - t0
        cpu1 = proc_cpu_seconds(self.node.pid)
        thr1 = proc_threads(self.node.pid)
        idle = self.wait_idle(30)
        uas_rc, uas_killed = wait_for(uas, 15)
        after = self.metrics.sample()
        udp1 = udp_sockets()
        snmp1 = udp_snmp()
        rows = sipp_stats(uac.stat_file)
        last = rows[-1] if rows else {}
        uas_rows = sipp_stats(uas.stat_file)
        uas_last = uas_rows[-1] if uas_rows else {}
        created = stat_int(last, "TotalCallCreated") or stat_int(last, "OutgoingCall(C)")
        # When the last call was created: the offered rate is total / that time.
        gen_time = creation_time(rows, total) or 0.0
        ok = stat_int(last, "SuccessfulCall(C)")
        failed = stat_int(last, "FailedCall(C)")
        node_out = delta_dict(outcomes(before), outcomes(after))
        not_answered = sum(v for k, v in node_out.items() if k != "answered")
        blocked = msum(after, "switchboard_trunk_calls_blocked_total") - msum(before, "switchboard_trunk_calls_blocked_total")
        node_sip_drops = drops_delta(udp0, udp1, lambda k: k == (NODE_IP, self.sip_port))
        sipp_drops = drops_delta(udp0, udp1, lambda k: k in ((CARRIER_IP, self.uac_port), (SEAT_IP, self.uas_port)))
        missing = total - ok - failed
        # The same failed call shows in SIPp's counters and in the node's outcomes: take the
        # larger view, not the sum.
        failures = max(failed + max(0, missing), int(not_answered) + int(blocked))
        offered = creation_rate(rows, total)
        cpu = cpu1 - cpu0
        threads = sorted(((thr1[t][1] - thr0.get(t, (None, 0))[1], thr1[t][0]) for t in thr1), reverse=True)
        res = {
            "rate": rate, "calls": total, "created": created, "ok": ok, "failed": failed,
            "missing": missing, "failures": failures, "offered": offered, "gen_time": gen_time,
            "uac_retrans": stat_int(last, "Retransmissions(C)"),
            "uas_retrans": stat_int(uas_last, "Retransmissions(C)"),
            "uas_failed": stat_int(uas_last, "FailedCall(C)"),
            "node_retrans": msum(after, "switchboard_sip_retransmissions_total") - msum(before, "switchboard_sip_retransmissions_total"),
            "node_sip_dropped": msum(after, "switchboard_sip_dropped_messages_total") - msum(before, "switchboard_sip_dropped_messages_total"),
            "node_outcomes": node_out, "blocked": blocked,
            "node_sip_socket_drops": node_sip_drops, "sipp_socket_drops": sipp_drops,
            "udp_rcvbuf_errors": snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0),
            "cpu_s": cpu, "cpu_pct": 100 * cpu / wall if wall else 0,
            "cpu_ms_per_call": 1000 * cpu / ok if ok else float("nan"),
            "peak_active": peak_active, "max_rss_mb": max_rss / 1024, "wall": wall,
            "threads": threads[:6], "load": loadavg(), "idle": idle,
            "uac_rc": uac_rc, "uac_killed": uac_killed, "uas_rc": uas_rc,
            "uac_unexpected": self.error_lines(uac),
        }
        # Sustained: every call offered at (close to) the asked rate, none failed.
        res["sustained"] = failures == 0 and created >= total and offered >= 0.97 * rate
        log(f"rate {rate}/s: offered {offered:.1f}/s, {ok}/{total} ok, failed {failed}, missing {missing}, "
            f"node not-answered {int(not_answered)}, retrans uac {res['uac_retrans']} uas {res['uas_retrans']}, "
            f"node CPU {res['cpu_pct']:.0f}% ({res['cpu_ms_per_call']:.2f} ms/call), peak active {peak_active:.0f}, "
            f"load {res['load']} -> {'SUSTAINED' if res['sustained'] else 'NOT sustained'}")
        return res

    # --- concurrency

    def concurrency_step(self, n, window):
        tag = f"conc-{n}"
        ramp_rate = max(25, min(100, n // 10))
        ramp = n / ramp_rate
        settle = 3
        hold_s = ramp + settle + window + 5
        pcap = self.work / f"{tag}.pcap"
        make_pcap(pcap, hold_s + 5)
        wavs_before = set(self.recordings.glob("*.wav"))
        self.register_seat(tag)
        overall = hold_s + ramp + 60
        uas = self.start_uas(tag, n, overall + 30, echo=True)
        rss_idle = proc_rss_kb(self.node.pid)
        t0 = time.time()
        uac = self.sipp(f"{tag}-uac", "uac-media.xml",
                        [f"{NODE_IP}:{self.sip_port}", "-s", FRONT_DESK, "-i", CARRIER_IP,
                         "-p", self.uac_port, "-mi", CARRIER_IP, "-mp", self.caller_media_port,
                         "-key", "pcap", pcap, "-r", ramp_rate, "-rp", "1000", "-m", n, "-l", n,
                         "-d", int(hold_s * 1000)], overall)
        # Ramp: wait (bounded) until all N calls are up.
        reached = False
        active = 0
        deadline = t0 + ramp * 2 + 30
        while time.time() < deadline and uac.poll() is None:
            try:
                active = self.active_calls()
            except OSError:
                pass
            if active >= n:
                reached = True
                break
            time.sleep(0.5)
        ramp_took = time.time() - t0
        time.sleep(settle)
        s1, t1 = self.timed_sample()
        u1 = udp_sockets()
        snmp1 = udp_snmp()
        c1 = proc_cpu_seconds(self.node.pid)
        thr1 = proc_threads(self.node.pid)
        uac_cpu1 = proc_cpu_seconds(uac.pid)
        uas_cpu1 = proc_cpu_seconds(uas.pid)
        min_active, max_rss = n, 0
        while time.time() < t1 + window:
            try:
                min_active = min(min_active, self.active_calls())
            except OSError:
                pass
            max_rss = max(max_rss, proc_rss_kb(self.node.pid))
            time.sleep(1)
        s2, t2 = self.timed_sample()
        u2 = udp_sockets()
        snmp2 = udp_snmp()
        c2 = proc_cpu_seconds(self.node.pid)
        thr2 = proc_threads(self.node.pid)
        uac_cpu2 = proc_cpu_seconds(uac.pid)
        uas_cpu2 = proc_cpu_seconds(uas.pid)
        load = loadavg()
        rss_at_n = proc_rss_kb(self.node.pid)
        max_rss = max(max_rss, rss_at_n)
        span = t2 - t1
        fwd = msum(s2, "switchboard_rtp_packets_total", direction="caller_to_callee") - msum(s1, "switchboard_rtp_packets_total", direction="caller_to_callee")
        back = msum(s2, "switchboard_rtp_packets_total", direction="callee_to_caller") - msum(s1, "switchboard_rtp_packets_total", direction="callee_to_caller")
        media_dropped = msum(s2, "switchboard_media_dropped_total") - msum(s1, "switchboard_media_dropped_total")
        lo, hi = self.rtp_range
        node_rtp_drops = drops_delta(u1, u2, lambda k: k[0] == NODE_IP and lo <= k[1] <= hi)
        echo_drops = drops_delta(u1, u2, lambda k: k == (SEAT_IP, self.echo_port))
        held = min(active, min_active) if reached else active
        expected = held * PACKETS_PER_SECOND * span
        # Let the calls end by themselves (SIPp hangs up after -d), bounded.
        uac_rc, uac_killed = wait_for(uac, max(10, hold_s - (time.time() - t0) + ramp + 40))
        idle = self.wait_idle(60)
        uas_rc, uas_killed = wait_for(uas, 20)
        rows = sipp_stats(uac.stat_file)
        last = rows[-1] if rows else {}
        ok = stat_int(last, "SuccessfulCall(C)")
        failed = stat_int(last, "FailedCall(C)")
        # Recordings of this step: count, sizes against the call length.
        time.sleep(1)
        wavs = sorted(set(self.recordings.glob("*.wav")) - wavs_before)
        sizes = sorted(p.stat().st_size for p in wavs)
        want = hold_s * WAV_BYTES_PER_SECOND
        plausible = sum(1 for s in sizes if 0.8 * want <= s <= 1.2 * want)
        fwd_loss = 1 - fwd / expected if expected else float("nan")
        rt_loss = 1 - back / expected if expected else float("nan")
        # The echo path alone (node -> seat -> SIPp echo -> node): exact, no timing involved.
        ret_loss = 1 - back / fwd if fwd else float("nan")
        # Loss at the node itself: datagrams its RTP sockets dropped (it did not read them in
        # time) or it could not relay, against all it handled. Drops at the SIPp echo socket
        # (one socket for all calls, 208 KiB buffer) are the test harness's, shown apart.
        node_lost = node_rtp_drops + media_dropped
        node_loss = node_lost / (fwd + back + node_lost) if fwd + back else float("nan")
        threads = sorted(((thr2[t][1] - thr1.get(t, (None, 0))[1], thr2[t][0]) for t in thr2), reverse=True)
        res = {
            "n": n, "reached": reached, "ramp_rate": ramp_rate, "ramp_took": ramp_took, "held": held,
            "window": span, "ok": ok, "failed": failed,
            "fwd": fwd, "back": back, "expected": expected,
            "fwd_loss": fwd_loss, "rt_loss": rt_loss, "ret_loss": ret_loss, "node_loss": node_loss, "media_dropped": media_dropped,
            "node_rtp_socket_drops": node_rtp_drops, "echo_socket_drops": echo_drops,
            "udp_rcvbuf_errors": snmp2.get("RcvbufErrors", 0) - snmp1.get("RcvbufErrors", 0),
            "cpu_pct": 100 * (c2 - c1) / span, "uac_cpu_pct": 100 * (uac_cpu2 - uac_cpu1) / span,
            "uas_cpu_pct": 100 * (uas_cpu2 - uas_cpu1) / span,
            # Per call: RSS at N calls minus the idle node's RSS at start. (RSS before the
            # step would hide memory the allocator kept from the step before.)
            "rss_idle_mb": self.idle_rss_kb / 1024, "rss_before_mb": rss_idle / 1024,
            "rss_mb": rss_at_n / 1024, "max_rss_mb": max_rss / 1024,
            "rss_per_call_kb": (rss_at_n - self.idle_rss_kb) / held if held else float("nan"),
            "recordings": len(wavs), "rec_plausible": plausible,
            "rec_min_kb": sizes[0] / 1024 if sizes else 0, "rec_max_kb": sizes[-1] / 1024 if sizes else 0,
            "rec_want_kb": want / 1024, "load": load, "threads": threads[:6], "idle": idle,
            "uac_rc": uac_rc, "uac_killed": uac_killed, "uas_rc": uas_rc,
            "uac_unexpected": self.error_lines(uac),
        }
        # Pass: every call up and completed, recorded, the full offered RTP relayed forward
        # (so the generator really offered the load), and the node lost < 0.1 %.
        res["pass"] = (reached and failed == 0 and ok == n and fwd_loss < LOSS_LIMIT
                       and node_loss < LOSS_LIMIT and len(wavs) == n and plausible == n)
        res["pass_e2e"] = res["pass"] and rt_loss < LOSS_LIMIT
        log(f"concurrency {n}: reached {reached} in {ramp_took:.1f}s, held >= {held:.0f} for {span:.1f}s, "
            f"calls ok {ok} failed {failed}, RTP expected {expected:.0f} fwd {fwd:.0f} back {back:.0f} "
            f"(loss fwd {100 * fwd_loss:.3f}% echo path {100 * ret_loss:.3f}% round trip {100 * rt_loss:.3f}%, "
            f"at the node {100 * node_loss:.3f}%), socket drops node {node_rtp_drops} SIPp echo {echo_drops}, "
            f"node CPU {res['cpu_pct']:.0f}% RSS {res['rss_mb']:.1f} MB ({res['rss_per_call_kb']:.1f} KiB/call), "
            f"recordings {len(wavs)} ({plausible} plausible), load {load} -> {'PASS' if res['pass'] else 'FAIL'}")
        # The WAVs are big (32 KB/s of call); keep disk use bounded.
        for p in wavs:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
        return res


# ---------------------------------------------------------------- report


def fmt_threads(threads, secs):
    return ", ".join(f"{name} {100 * cpu / secs:.0f}%" for cpu, name in threads if cpu > 0.005 * secs)


def report(opts, bench, rates, concs, loads, started, argv):
    out = []
    p = out.append
    p("")
    p("=" * 100)
    p(f"SIP load benchmark: media-node (release), {'QUICK smoke run' if opts.quick else 'full run'}")
    p(f"command: {argv}")
    p(f"node: {bench.node_cmd if bench else '-'}  (RUST_LOG={bench.rust_log if bench else '-'})")
    p(f"machine: {os.cpu_count()} CPUs; load average (1/5/15 min) at start {loads[0]}, at end {loadavg()}; "
      f"took {time.time() - started:.0f} s")
    p("")
    p(f"Call rate: carrier (SIPp UAC, {CARRIER_IP}) -> trunk -> entry point -> seat 1002 (SIPp UAS); "
      f"calls answered, BYE after 1 s, no RTP; recording OFF; {opts.rate_duration} s per rate")
    p(f"{'rate/s':>7} {'offered/s':>9} {'calls':>6} {'ok':>6} {'failed':>6} {'retrans':>8} "
      f"{'nodeCPU%':>8} {'CPUms/call':>10} {'peakUp':>6} {'RSS MB':>7} {'load1':>6}  result")
    for r in sorted(rates, key=lambda r: r["rate"]):
        p(f"{r['rate']:>7} {r['offered']:>9.1f} {r['calls']:>6} {r['ok']:>6} {r['failures']:>6} "
          f"{r['uac_retrans'] + r['uas_retrans']:>8} {r['cpu_pct']:>8.0f} {r['cpu_ms_per_call']:>10.2f} "
          f"{r['peak_active']:>6.0f} {r['max_rss_mb']:>7.1f} {r['load'].split()[0]:>6}  "
          f"{'sustained' if r['sustained'] else 'NOT sustained'}")
    p("")
    p(f"Concurrency: calls ramped up then held {opts.window} s with RTP both ways (caller plays 20 ms A-law, "
      f"seat echoes; node transcodes A-law<->u-law), recording ON")
    p(f"  expected = calls x {PACKETS_PER_SECOND} packets/s x window; fwd/back = node's switchboard_rtp_packets_total "
      f"caller_to_callee / callee_to_caller in the window; loss fwd = 1 - fwd/expected (includes any SIPp send "
      f"shortfall), echo = 1 - back/fwd, rt = 1 - back/expected (end to end); "
      f"node = (nodeDrop + switchboard_media_dropped_total) / packets the node handled; nodeDrop / echoDrop = "
      f"receive-buffer drops (/proc/net/udp) on the node's RTP sockets / on the SIPp echo socket. "
      f"Pass: all calls up, completed and recorded, loss fwd < {100 * LOSS_LIMIT:.1f} % and node < {100 * LOSS_LIMIT:.1f} %")
    p(f"{'calls':>6} {'held':>6} {'ok':>6} {'failed':>6} {'expected':>9} {'fwd pkts':>9} {'back pkts':>9} "
      f"{'loss fwd%':>9} {'echo%':>6} {'loss rt%':>8} {'node%':>6} {'nodeDrop':>8} {'echoDrop':>8} {'nodeCPU%':>8} {'RSS MB':>7} {'KiB/call':>8} "
      f"{'WAVs':>5} {'load1':>6}  result")
    for c in concs:
        p(f"{c['n']:>6} {c['held']:>6.0f} {c['ok']:>6} {c['failed']:>6} {c['expected']:>9.0f} {c['fwd']:>9.0f} "
          f"{c['back']:>9.0f} {100 * c['fwd_loss']:>9.3f} {100 * c['ret_loss']:>6.3f} {100 * c['rt_loss']:>8.3f} "
          f"{100 * c['node_loss']:>6.3f} {c['node_rtp_socket_drops']:>8} {c['echo_socket_drops']:>8} {c['cpu_pct']:>8.0f} {c['rss_mb']:>7.1f} {c['rss_per_call_kb']:>8.1f} "
          f"{c['recordings']:>5} {c['load'].split()[0]:>6}  {('pass' if c['pass_e2e'] else 'pass*') if c['pass'] else 'FAIL'}")
    if any(c["pass"] and not c["pass_e2e"] for c in concs):
        p("  pass* = the node lost < 0.1 % but the round trip did not meet 0.1 %: the rest was dropped by the "
          "SIPp echo (echoDrop), the harness, not the node")
    p("")
    best_rate = max((r for r in rates if r["sustained"]), key=lambda r: r["rate"], default=None)
    best_conc = max((c for c in concs if c["pass"]), key=lambda c: c["n"], default=None)
    best_e2e = max((c for c in concs if c["pass_e2e"]), key=lambda c: c["n"], default=None)
    p("Results")
    if best_rate:
        p(f"  highest call rate sustained {opts.rate_duration} s with zero failed calls: {best_rate['rate']} calls/s "
          f"(target >= 300); node CPU {best_rate['cpu_ms_per_call']:.2f} ms per call "
          f"({best_rate['cpu_pct']:.0f}% of one core at that rate)")
    elif opts.skip_rate:
        p("  call rate: not run (--skip-rate)")
    else:
        p("  highest call rate sustained with zero failed calls: none of the rates tried")
    if best_conc:
        p(f"  most concurrent calls held {opts.window} s with RTP relay + recording at < 0.1 % loss: {best_conc['n']} "
          f"(target >= 500); node RSS {best_conc['rss_mb']:.1f} MB at {best_conc['n']} calls vs "
          f"{best_conc['rss_idle_mb']:.1f} MB idle at start = {best_conc['rss_per_call_kb']:.1f} KiB per call; "
          f"node CPU {best_conc['cpu_pct']:.0f}% ({best_conc['cpu_pct'] / best_conc['n']:.3f}% of a core per call); "
          f"recordings {best_conc['recordings']} WAVs of {best_conc['rec_min_kb']:.0f}-{best_conc['rec_max_kb']:.0f} KiB "
          f"(expected ~{best_conc['rec_want_kb']:.0f} KiB each)")
        p(f"  ... with < 0.1 % loss end to end as well (round trip through the SIPp echo): "
          f"{best_e2e['n'] if best_e2e else 'none of the sizes tried'}")
    elif opts.skip_concurrency:
        p("  concurrency: not run (--skip-concurrency)")
    else:
        p("  most concurrent calls with < 0.1 % loss: none of the sizes tried")
    for r in rates:
        if not r["sustained"]:
            p(f"  rate {r['rate']}/s detail: offered {r['offered']:.1f}/s (last call created at {r['gen_time']:.1f} s), "
              f"uac failed {r['failed']} missing {r['missing']} unexpected-msg lines {r['uac_unexpected']}, "
              f"uas failed {r['uas_failed']}, node outcomes {r['node_outcomes']}, trunk blocked {r['blocked']:.0f}, "
              f"retrans uac/uas/node {r['uac_retrans']}/{r['uas_retrans']}/{r['node_retrans']:.0f}, "
              f"node SIP dropped {r['node_sip_dropped']:.0f}, socket drops node SIP {r['node_sip_socket_drops']} "
              f"SIPp {r['sipp_socket_drops']} (kernel RcvbufErrors {r['udp_rcvbuf_errors']}), "
              f"busiest node threads: {fmt_threads(r['threads'], r['wall'])}")
    for c in concs:
        if not c["pass"]:
            p(f"  concurrency {c['n']} detail: reached {c['reached']} (ramp {c['ramp_rate']}/s took {c['ramp_took']:.1f} s), "
              f"SIPp ok {c['ok']} failed {c['failed']} unexpected-msg lines {c['uac_unexpected']}, "
              f"media dropped {c['media_dropped']:.0f}, socket drops node RTP {c['node_rtp_socket_drops']} "
              f"echo {c['echo_socket_drops']} (kernel RcvbufErrors {c['udp_rcvbuf_errors']}), "
              f"WAVs {c['recordings']} ({c['rec_plausible']} plausible), SIPp CPU uac {c['uac_cpu_pct']:.0f}% "
              f"uas {c['uas_cpu_pct']:.0f}%, busiest node threads: {fmt_threads(c['threads'], c['window'])}")
    for note in (bench.log_notes if bench else []):
        p(f"  {note}")
    p(f"  load average samples during the run: {'; '.join(loads)}")
    p(f"  logs, SIPp stats and node logs: {bench.work if bench else '-'}")
    p("=" * 100)
    print("\n".join(out), flush=True)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node-bin", required=True)
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 3 minutes)")
    ap.add_argument("--rates", help="comma-separated call rates to try (calls/s)")
    ap.add_argument("--concurrency", help="comma-separated concurrent call counts to try")
    ap.add_argument("--rate-duration", type=int, help="seconds per call rate (default 30; quick 5)")
    ap.add_argument("--window", type=int, help="seconds the concurrent calls are held and measured (default 60; quick 10)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--skip-concurrency", action="store_true")
    ap.add_argument("--argv", default="")
    opts = ap.parse_args()
    if opts.quick:
        rates = [20, 50]
        concs = [20, 50]
        opts.rate_duration = opts.rate_duration or 5
        opts.window = opts.window or 10
    else:
        rates = [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500]
        concs = [100, 250, 500, 750, 1000, 1500]
        opts.rate_duration = opts.rate_duration or 30
        opts.window = opts.window or 60
    if opts.rates:
        rates = [int(x) for x in opts.rates.split(",")]
    if opts.concurrency:
        concs = [int(x) for x in opts.concurrency.split(",")]

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    if not shutil.which("sipp"):
        sys.exit("sip-load: sipp is required (Debian/Ubuntu package sip-tester)")
    if not PCAP_SOURCE.exists():
        sys.exit(f"sip-load: {PCAP_SOURCE} is missing (it comes with sip-tester)")
    if not _binds(CARRIER_IP, 0, socket.SOCK_DGRAM):
        sys.exit(f"sip-load: cannot bind {CARRIER_IP} (Linux routes 127/8 to lo; other systems need an alias)")

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="sip-load-"))
    loads = [loadavg()]
    log(f"work directory {work}; load average {loads[0]}")
    bench = Bench(opts, opts.node_bin, work)
    rate_results, conc_results = [], []
    try:
        if not opts.skip_rate:
            # At most -l = 3 x rate calls up at once, two port pairs each.
            bench.rtp_range = free_rtp_range(min(4 * (3 * max(rates) + 50) + 100, 20000))
            bench.start_node("rate", record=False, rtp_range=bench.rtp_range)
            first_fail = None
            for rate in rates:
                r = bench.rate_step(rate, opts.rate_duration)
                rate_results.append(r)
                loads.append(f"rate {rate}/s: {r['load']}")
                if not r["idle"]:
                    log("calls still up after the step; waiting longer before the next")
                    bench.wait_idle(60)
                time.sleep(2)
                if not r["sustained"]:
                    first_fail = rate
                    break
            # Narrow down between the last sustained rate and the first failing one.
            good = max((r["rate"] for r in rate_results if r["sustained"]), default=0)
            for _ in range(0 if opts.quick else 2):
                if first_fail is None or first_fail - good <= 50:
                    break
                mid = int(round((good + first_fail) / 2 / 25.0) * 25)
                if mid in (good, first_fail):
                    break
                r = bench.rate_step(mid, opts.rate_duration)
                rate_results.append(r)
                loads.append(f"rate {mid}/s: {r['load']}")
                bench.wait_idle(60)
                time.sleep(2)
                if r["sustained"]:
                    good = mid
                else:
                    first_fail = mid
            w, e, top = bench.node_log_summary()
            log(f"rate phase node log: {w} WARN, {e} ERROR lines; most frequent: {top}")
            bench.log_notes.append(f"rate phase node log: {w} WARN, {e} ERROR; most frequent: {top}")
            bench.stop_node()
        if not opts.skip_concurrency:
            bench.rtp_range = free_rtp_range(4 * max(concs) + 100)
            bench.start_node("concurrency", record=True, rtp_range=bench.rtp_range)
            for n in concs:
                c = bench.concurrency_step(n, opts.window)
                conc_results.append(c)
                loads.append(f"{n} calls: {c['load']}")
                if not c["idle"]:
                    bench.wait_idle(60)
                time.sleep(2)
                if not c["pass"]:
                    break
            w, e, top = bench.node_log_summary()
            log(f"concurrency phase node log: {w} WARN, {e} ERROR lines; most frequent: {top}")
            bench.log_notes.append(f"concurrency phase node log: {w} WARN, {e} ERROR; most frequent: {top}")
            bench.stop_node()
    finally:
        bench.stop_node()
        cleanup()
        text = report(opts, bench, rate_results, conc_results, loads, started, opts.argv)
        (work / "summary.txt").write_text(text)
        if not opts.keep:
            # Keep the logs (small) but never the recordings.
            for d in work.glob("recordings-*"):
                shutil.rmtree(d, ignore_errors=True)
            for f in work.glob("*.pcap"):
                f.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
