# The real mDNS clients of the namespace tests, run by mdnslab with Debian's python3.
#   browse TYPE SECONDS        python3-zeroconf (as Home Assistant uses it) browses TYPE
#                              and resolves what it finds; prints a JSON list.
#   query NAME SRC DST         one-shot legacy query (RFC 6762 §6.7) for NAME's A record,
#                              from address SRC to DST port 5353; prints
#                              "ANSWER <ms> <address>" or "NOANSWER".
import json
import socket
import struct
import sys
import time


def browse(typ, seconds):
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
    while not found and time.monotonic() < deadline:
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


if sys.argv[1] == "browse":
    browse(sys.argv[2], float(sys.argv[3]))
elif sys.argv[1] == "query":
    query(sys.argv[2], sys.argv[3], sys.argv[4])
