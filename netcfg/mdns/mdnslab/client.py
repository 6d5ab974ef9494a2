# The real mDNS clients of the namespace tests, run by mdnslab with Debian's python3.
#   browse TYPE SECONDS [N]    python3-zeroconf (as Home Assistant uses it) browses TYPE
#                              until it finds N instances (default 1) or SECONDS pass, and
#                              resolves what it found; prints a JSON list.
#   query NAME SRC DST         one-shot legacy query (RFC 6762 §6.7) for NAME's A record,
#                              from address SRC to DST port 5353; prints
#                              "ANSWER <ms> <address>" or "NOANSWER".
#   dualquery NAME IFACE ADDR  as a dual-stack host does: one multicast query for NAME's A
#                              record over IPv4 and IPv6 at once from port 5353 on IFACE
#                              (IPv4 address ADDR); prints "ANSWERS <n>", the responses
#                              holding that A record heard in the next 1.5 s.
#   zcquery NAME AT SECONDS    a fresh python3-zeroconf instance, started at AT (seconds since
#                              the epoch), sends one query for NAME's A record (IPv4 and
#                              IPv6) and waits at most SECONDS; prints "ANSWER <ms> <address>
#                              late=<ms>" (late: how long after AT the query left) or
#                              "NOANSWER late=<ms>".
import json
import socket
import struct
import sys
import time


def browse(typ, seconds, want=1):
    from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

    zc = Zeroconf(ip_version=IPVersion.All)
    found = []

    class Listener(ServiceListener):
        def add_service(self, zc, type_, name):
            found.append(name)

        def update_service(self, zc, type_, name):
            pass

        def remove_service(self, zc, type_, name):
            pass

    ServiceBrowser(zc, typ, Listener())
    deadline = time.monotonic() + seconds
    while len(set(found)) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    out = []
    for name in sorted(set(found)):
        info = zc.get_service_info(typ, name, timeout=3000)
        if info is None:
            out.append({"name": name})
            continue
        props = {}
        for k, v in (info.properties or {}).items():
            props[k.decode()] = (v or b"").decode()
        out.append({
            "name": name,
            "server": info.server,
            "port": info.port,
            "addresses": info.parsed_addresses(IPVersion.All),
            "properties": props,
        })
    zc.close()
    print(json.dumps(out))


def query(name, src, dst):
    q = struct.pack(">HHHHHH", 0x4242, 0, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(2)
    start = time.monotonic()
    s.sendto(q, (dst, 5353))
    try:
        data, _ = s.recvfrom(9000)
    except socket.timeout:
        print("NOANSWER")
        return
    ms = (time.monotonic() - start) * 1000
    print("ANSWER %.2f %s" % (ms, first_a(data)))


def skip_name(b, off):
    while off < len(b):
        n = b[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n
    return len(b)


def first_a(b):
    qd, an = struct.unpack(">HH", b[4:8])
    off = 12
    for _ in range(qd):
        off = skip_name(b, off) + 4
    for _ in range(an):
        off = skip_name(b, off)
        typ, _, _, rdlen = struct.unpack(">HHIH", b[off:off + 10])
        off += 10
        if typ == 1 and rdlen == 4:
            return socket.inet_ntoa(b[off:off + 4])
        off += rdlen
    return "none"


def dualquery(name, ifname, v4addr):
    import select

    idx = socket.if_nametoindex(ifname)
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    for s in (s4, s6):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s4.bind(("", 5353))
    s6.bind(("::", 5353))
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("224.0.0.251") + socket.inet_aton(v4addr))
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(v4addr))
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, "ff02::fb") + struct.pack("@I", idx))
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    q = struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 1, 1)

    def collect(seconds, first_only):
        n = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r, _, _ = select.select([s4, s6], [], [], max(0, deadline - time.monotonic()))
            for s in r:
                data, _ = s.recvfrom(9000)
                if len(data) > 12 and data[2] & 0x80 and first_a(data) != "none":
                    n += 1
                    if first_only:
                        return n
        return n

    # First one answer, asking again each second as a querier does (RFC 6762
    # §5.2); then a pause past the one-second rule (§6) that answer started.
    for _ in range(5):
        s4.sendto(q, ("224.0.0.251", 5353))
        if collect(1.0, True):
            break
    time.sleep(1.2)
    for s in (s4, s6):  # the copy of that answer over the other family, unread
        s.setblocking(False)
        try:
            while s.recv(9000):
                pass
        except BlockingIOError:
            pass
        s.setblocking(True)
    s4.sendto(q, ("224.0.0.251", 5353))
    s6.sendto(q, ("ff02::fb", 5353, 0, idx))
    print("ANSWERS %d" % collect(1.5, False))


def zcquery(name, at, seconds):
    import threading
    from zeroconf import DNSOutgoing, DNSQuestion, IPVersion, RecordUpdateListener, Zeroconf, const

    while time.time() < at:
        time.sleep(min(0.005, max(0, at - time.time())))
    zc = Zeroconf(ip_version=IPVersion.All)
    got = threading.Event()
    addrs = []

    class Listener(RecordUpdateListener):
        def async_update_records(self, zc, now, records):
            for r in records:
                rec = r.new
                if rec.type == const._TYPE_A and rec.name.lower() == name.lower() and rec.ttl > 0:
                    addrs.append(socket.inet_ntoa(rec.address))
                    got.set()

    zc.add_listener(Listener(), None)
    out = DNSOutgoing(const._FLAGS_QR_QUERY)
    out.add_question(DNSQuestion(name, const._TYPE_A, const._CLASS_IN))
    late = (time.time() - at) * 1000
    start = time.monotonic()
    zc.send(out)
    if got.wait(seconds):
        print("ANSWER %.2f %s late=%d" % ((time.monotonic() - start) * 1000, addrs[0], late))
    else:
        print("NOANSWER late=%d" % late)
    zc.close()


if sys.argv[1] == "browse":
    browse(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
elif sys.argv[1] == "query":
    query(sys.argv[2], sys.argv[3], sys.argv[4])
elif sys.argv[1] == "dualquery":
    dualquery(sys.argv[2], sys.argv[3], sys.argv[4])
elif sys.argv[1] == "zcquery":
    zcquery(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
