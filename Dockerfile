# One image for every netdiag service; the command picks the service:
#   python -m services.{topology,collector,cloud,simulator,gateway}
#   python -m services.collector agent --node NODE     (the node agent: runs as root, see below)
# Multi-stage: dependencies are built into a venv in the builder; the runtime stage is slim.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/netdiag
COPY pyproject.toml README.md requirements-runtime.lock ./
COPY shared ./shared
COPY services ./services
# Only the runtime set, at the versions CI tested (hashes checked): no embedded nats-server (NATS
# runs as its own image), no lab/ (the test stand-in for the outside world, its own distribution).
RUN /opt/netdiag/bin/pip install --no-compile --require-hashes -r requirements-runtime.lock \
 && /opt/netdiag/bin/pip install --no-compile --no-deps --no-build-isolation .

FROM python:3.11-slim-bookworm AS runtime
# What the node agent reads the dataplane with (read-only use): ip, iptables/nft save, conntrack, ipset;
# bpftool (XDP/tc/cgroup BPF programs) and bpftrace (live probes' kernel drop tracing).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iproute2 iptables nftables conntrack ipset ipvsadm bpftool bpftrace \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 netdiag \
 && useradd --system --uid 10001 --gid netdiag --home-dir /nonexistent --shell /usr/sbin/nologin netdiag
COPY --from=builder /opt/netdiag /opt/netdiag
ENV PATH=/opt/netdiag/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NETDIAG_LOG_LEVEL=info
# Non-root by default; the agent's DaemonSet (deploy/helm) sets runAsUser 0 with exactly
# NET_ADMIN, SYS_ADMIN and SYS_PTRACE instead of privileged.
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT []
CMD ["python", "-m", "services.gateway", "--host", "0.0.0.0", "--port", "8080"]

# `docker compose` try-out only: the cloud OpenAPI emulator (lab/cloudemu) with example state.
# The product image (the last stage, the default target) never contains lab/.
FROM runtime AS tryout
COPY --chown=10001:10001 lab /opt/tryout/lab
COPY --chown=10001:10001 examples /opt/tryout/examples
ENV PYTHONPATH=/opt/tryout
WORKDIR /opt/tryout

FROM runtime
