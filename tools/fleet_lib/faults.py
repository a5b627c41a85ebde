"""Fault kinds: parsing (JSON file and --fault flags), defaults and validation."""

import json
import re

from .common import FleetError

# kind -> ordered (arg name, type, default); a default of None means required.
# Positional flag arguments (--fault NODE:KIND:A:B) fill these in order.
KINDS = {
    # nothing accepts on the node's SSH and health ports: "refused" = a bound socket that
    # never listens (connect gets RST); "timeout" = a listener that never accepts
    # (handshake/banner never comes; once its tiny backlog is full, SYNs are dropped).
    "unreachable": [("mode", str, "refused")],
    # the node's sshd presents another ed25519 host key than known_hosts holds.
    "wrong_host_key": [],
    # the node's sshd refuses the fleet user whatever the credentials (DenyUsers).
    "auth_refused": [],
    # the node directory (parent of deploy_path) is a small tmpfs filled to `percent` %.
    "disk_full": [("percent", int, 96), ("size_mb", int, 4)],
    # startup.sh exits with `exit_code` (after logging the attempt), service stays down.
    "startup_fails": [("exit_code", int, 1)],
    # health never answers 200: `status` (default 503), or "hang" = never answers at all.
    "health_never": [("status", str, "503")],
    # health answers 200 only `seconds` after the service (re)started.
    "health_slow": [("seconds", float, 10.0)],
    # while otherwise healthy, every (period+1)-th answer is 503: period 1 = 200,503,200,...
    "health_flapping": [("period", int, 1)],
    # health answers 503 while the deploy path differs (paths, sizes, contents) from the tree
    # the node had at `up`: any new build fails on this node, an exact rollback heals it.
    "rejects_new_build": [],
    # a TCP proxy in front of sshd forwards only `bytes` client->server bytes per
    # connection, then cuts both sides; `connections` > 0 limits the cut to the first N.
    "cut_after_bytes": [("bytes", int, None), ("connections", int, 0)],
    # a TCP proxy in front of sshd limits each direction to `rate` bytes/s (0 = no limit)
    # and adds `delay_ms` one-way latency to every chunk in each direction.
    "slow_link": [("rate", int, 262144), ("delay_ms", int, 50)],
    # a TCP proxy in front of sshd that adds `delay_ms` one-way latency in each direction and
    # now and then stalls a direction as a lost segment would (retransmission timeout): each
    # forwarded chunk is, with probability `stall_pct` %, held for a random stall_min_ms..
    # stall_max_ms before it goes, and everything behind it waits (head-of-line blocking).
    # The draws come from a PRNG seeded with (`seed`, node, connection number, direction):
    # the same seed and traffic give the same stalls.
    "stalling_link": [("delay_ms", int, 150), ("stall_pct", float, 3.0), ("stall_min_ms", int, 1000),
                      ("stall_max_ms", int, 3000), ("seed", int, 0)],
    # shutdown.sh sleeps `seconds` before stopping the service.
    "shutdown_hangs": [("seconds", int, 3600)],
    # an extra sshd_config line for this node only (Match LocalPort block), e.g. "RekeyLimit 1M".
    "sshd_option": [("option", str, None)],
}

PROXY_KINDS = ("cut_after_bytes", "slow_link", "stalling_link")


def node_name(n, width):
    return f"node-{n:0{width}d}"


def name_width(count):
    return max(4, len(str(count)))


def _convert(kind, arg, typ, value):
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise FleetError(f"fault {kind}: argument {arg}={value!r} is not a valid {typ.__name__}")


def normalize(kind, args):
    """Validated fault dict {"kind": ..., arg: value, ...} with defaults filled in."""
    if kind not in KINDS:
        raise FleetError(f"unknown fault kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    spec = KINDS[kind]
    known = {name for name, _, _ in spec}
    extra = set(args) - known
    if extra:
        raise FleetError(f"fault {kind}: unknown argument(s) {', '.join(sorted(extra))}"
                         f" (takes: {', '.join(n for n, _, _ in spec) or 'none'})")
    out = {"kind": kind}
    for name, typ, default in spec:
        if name in args:
            out[name] = _convert(kind, name, typ, args[name])
        elif default is None:
            raise FleetError(f"fault {kind}: argument {name!r} is required")
        else:
            out[name] = default
    _check(out)
    return out


def _check(f):
    k = f["kind"]
    bad = None
    if k == "unreachable" and f["mode"] not in ("refused", "timeout"):
        bad = "mode must be 'refused' or 'timeout'"
    elif k == "disk_full" and not (91 <= f["percent"] <= 99 and 1 <= f["size_mb"] <= 256):
        bad = "percent must be 91..99 and size_mb 1..256"
    elif k == "startup_fails" and not 1 <= f["exit_code"] <= 255:
        bad = "exit_code must be 1..255"
    elif k == "health_never":
        if f["status"] != "hang" and not re.fullmatch(r"[1-5]\d\d", f["status"]) or f["status"] == "200":
            bad = "status must be an HTTP status other than 200, or 'hang'"
    elif k == "health_slow" and not f["seconds"] > 0:
        bad = "seconds must be > 0"
    elif k == "health_flapping" and f["period"] < 1:
        bad = "period must be >= 1"
    elif k == "cut_after_bytes" and (f["bytes"] < 1 or f["connections"] < 0):
        bad = "bytes must be >= 1 and connections >= 0"
    elif k == "slow_link" and (f["rate"] < 0 or f["delay_ms"] < 0 or (f["rate"] == 0 and f["delay_ms"] == 0)):
        bad = "rate and delay_ms must be >= 0, not both 0"
    elif k == "slow_link" and 0 < f["rate"] < 1024:
        bad = "rate must be 0 (unlimited) or >= 1024 bytes/s"
    elif k == "stalling_link" and not (0 <= f["delay_ms"] <= 60000 and 0 <= f["stall_pct"] <= 100
                                       and 0 <= f["stall_min_ms"] <= f["stall_max_ms"] <= 600000):
        bad = "need 0 <= delay_ms <= 60000, 0 <= stall_pct <= 100, 0 <= stall_min_ms <= stall_max_ms <= 600000"
    elif k == "shutdown_hangs" and f["seconds"] < 1:
        bad = "seconds must be >= 1"
    elif k == "sshd_option":
        if not re.fullmatch(r"[A-Za-z]+[ =][^\n\r]+", f["option"]):
            bad = "option must look like 'Keyword value'"
    if bad:
        raise FleetError(f"fault {k}: {bad}")


def resolve_node(ref, count):
    """'node-0003', 'node-3' or '3' -> canonical name; error if out of range."""
    m = re.fullmatch(r"(?:node-)?0*(\d+)", ref)
    if not m or not 1 <= int(m.group(1)) <= count:
        raise FleetError(f"fault for unknown node {ref!r} (fleet has node-1..node-{count})")
    return node_name(int(m.group(1)), name_width(count))


def parse_flag(text, count):
    """NODE:KIND[:ARG[:ARG]] or NODE:KIND:name=value,name=value -> (node, fault)."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise FleetError(f"--fault {text!r}: expected NODE:KIND[:ARG...]")
    node = resolve_node(parts[0], count)
    kind = parts[1]
    args = {}
    if len(parts) == 3 and parts[2] != "":
        rest = parts[2]
        spec = KINDS.get(kind, [])
        if "=" in rest.split(":")[0].split(" ")[0] and kind != "sshd_option":
            for item in rest.split(","):
                name, _, value = item.partition("=")
                args[name.strip()] = value.strip()
        elif kind == "sshd_option":
            args["option"] = rest
        else:
            values = rest.split(":")
            if len(values) > len(spec):
                raise FleetError(f"--fault {text!r}: {kind} takes at most {len(spec)} argument(s)")
            for (name, _, _), value in zip(spec, values):
                args[name] = value
    return node, normalize(kind, args)


def load(faults_file, flags, count):
    """{node name: [fault, ...]} from a JSON file and --fault flags."""
    out = {}
    if faults_file:
        try:
            with open(faults_file) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise FleetError(f"--faults {faults_file}: {e}")
        if not isinstance(data, dict):
            raise FleetError(f"--faults {faults_file}: expected an object {{\"node-0001\": [...]}}")
        for ref, items in data.items():
            node = resolve_node(ref, count)
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise FleetError(f"--faults {faults_file}: {ref}: expected a list of faults")
            for item in items:
                if not isinstance(item, dict) or "kind" not in item:
                    raise FleetError(f"--faults {faults_file}: {ref}: each fault needs a \"kind\"")
                args = {k: v for k, v in item.items() if k != "kind"}
                out.setdefault(node, []).append(normalize(item["kind"], args))
    for text in flags or ():
        node, fault = parse_flag(text, count)
        out.setdefault(node, []).append(fault)
    for node, items in out.items():
        kinds = [f["kind"] for f in items]
        for k in set(kinds):
            if kinds.count(k) > 1 and k != "sshd_option":
                raise FleetError(f"{node}: fault {k} given twice")
    return out


def by_kind(faults):
    """[fault, ...] -> {kind: fault} (sshd_option: list)."""
    out = {}
    for f in faults:
        if f["kind"] == "sshd_option":
            out.setdefault("sshd_option", []).append(f)
        else:
            out[f["kind"]] = f
    return out
