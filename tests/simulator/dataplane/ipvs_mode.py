"""Turn a recorded iptables-mode node dump into the dump of the same node under kube-proxy `mode: ipvs`.

This kernel has no IPVS and no dummy interfaces, so the IPVS state is written in the shapes the
collector reads from a real node: `ipvsadm-save -n` text (parsed by the collector's own reader),
`iptables-save` and `ipset save` as kube-proxy's IPVS proxier programs them (pkg/proxy/ipvs/proxier.go:
KUBE-SERVICES with the KUBE-CLUSTER-IP set, KUBE-MARK-MASQ, KUBE-POSTROUTING with KUBE-LOOP-BACK for
hairpin, KUBE-IPVS-FILTER), and the kube-ipvs0 dummy device (DOWN) holding the Service addresses, with
the local routes the kernel adds for them. Flannel's rules stay as recorded.
"""

from __future__ import annotations

from services.collector.reader.ipvs import parse_ipvsadm_save
from shared.netstack import Link, NetnsDump, Route

FILTER = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A OUTPUT -j KUBE-FIREWALL
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" \
-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate \
RELATED,ESTABLISHED -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT \
--reject-with icmp-port-unreachable
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set \
KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
COMMIT
""".replace("\\\n", "")

NAT = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
{flannel}
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set \
--match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin \
purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade \
purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
""".replace("\\\n", "")

# (ClusterIP, port, protocol) → real servers; NodePort 30000 on each node address
SERVICES = {("10.96.0.100", 80, "tcp"): ["10.244.1.3:8080", "10.244.2.2:8080"],
            ("10.96.0.10", 53, "udp"): ["10.244.1.4:53"], ("10.96.0.10", 53, "tcp"): ["10.244.1.4:53"]}
NODE_PORT = (30000, "tcp", ["10.244.1.3:8080", "10.244.2.2:8080"])
LOOP_BACK = {("10.244.1.3", 8080, "tcp"), ("10.244.2.2", 8080, "tcp"), ("10.244.1.4", 53, "udp"),
             ("10.244.1.4", 53, "tcp")}
FLAG = {"tcp": "-t", "udp": "-u"}


def ipvsadm_save(node_addresses: list[str], scheduler: str = "rr") -> str:
    """What `ipvsadm-save -n` prints for the Services above on a node with these addresses."""
    lines = []
    services = [*((vip, port, proto, reals) for (vip, port, proto), reals in SERVICES.items()),
                *((addr, NODE_PORT[0], NODE_PORT[1], NODE_PORT[2]) for addr in node_addresses)]
    for vip, port, proto, reals in services:
        lines.append(f"-A {FLAG[proto]} {vip}:{port} -s {scheduler}")
        lines += [f"-a {FLAG[proto]} {vip}:{port} -r {real} -m -w 1" for real in reals]
    return "\n".join(lines) + "\n"


def ipset_save() -> str:
    header = "family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x6d8a4b21"
    out = [f"create KUBE-CLUSTER-IP hash:ip,port {header}"]
    out += [f"add KUBE-CLUSTER-IP {vip},{proto}:{port}" for vip, port, proto in SERVICES]
    out.append(f"create KUBE-LOOP-BACK hash:ip,port,ip {header}")
    out += [f"add KUBE-LOOP-BACK {ip},{proto}:{port},{ip}" for ip, port, proto in sorted(LOOP_BACK)]
    out += ["create KUBE-NODE-PORT-TCP bitmap:port range 0-65535", f"add KUBE-NODE-PORT-TCP {NODE_PORT[0]}",
            "create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535"]
    for name in ("KUBE-LOAD-BALANCER", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        out.append(f"create {name} hash:ip,port {header}")
    out.append(f"create KUBE-IPVS-IPS hash:ip {header}")
    out += [f"add KUBE-IPVS-IPS {vip}" for vip in sorted({v for v, _, _ in SERVICES})]
    return "\n".join(out) + "\n"


def to_ipvs_mode(host: NetnsDump, scheduler: str = "rr") -> None:
    """Rewrite a recorded host namespace (iptables mode) in place into kube-proxy IPVS mode."""
    state = host.netfilter.iptables[0]
    flannel = [line for line in state.save.splitlines() if line.startswith("-A FLANNEL-POSTRTG")]
    state.save = FILTER + NAT.replace("{flannel}", "\n".join(flannel))
    host.netfilter.ipsets = ipset_save()
    vips = sorted({vip for vip, _, _ in SERVICES})
    host.links.append(Link(index=90, name="kube-ipvs0", kind="dummy", state="DOWN", admin_up=False,
                           addresses=[f"{v}/32" for v in vips]))
    host.routes += [Route(table=255, type="local", dst=f"{v}/32", dev="kube-ipvs0", prefsrc=v, scope="host",
                          protocol="kernel") for v in vips]
    node_addresses = [a.split("/")[0] for lk in host.links if lk.name in ("eth0", "cni0") for a in lk.addresses
                      if ":" not in a]
    host.netfilter.ipvs = parse_ipvsadm_save(ipvsadm_save(node_addresses, scheduler))
