# srd in a container: the daemon as PID 1, as an unprivileged user, with the bundled models.
#
#   docker build -t srd .
#   docker run -d --init --stop-timeout 60 --name srd \
#     -v /srv/photos/inbox:/data/inbox -v /srv/photos/outbox:/data/outbox \
#     -v /srv/photos/failed:/data/failed -v srd-state:/var/lib/srd srd
#   docker exec srd srd status --config /etc/srd/srd.yaml    # the per-inbox table
#
# The mounted folders must be writable by uid 10001 (or pass --user with your uid; the state volume
# must then be writable by it too). Configure by mounting your own /etc/srd/srd.yaml (read-only).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/srd/venv/bin:$PATH

# The same user and paths as the systemd unit.
RUN groupadd --system --gid 10001 srd \
    && useradd --system --uid 10001 --gid srd --home-dir /var/lib/srd --shell /usr/sbin/nologin srd

# A non-editable install: the package, its dependencies, and the bundled models in
# /opt/srd/venv/share/srd/models (and the docs in /opt/srd/venv/share/doc/srd).
COPY . /tmp/srd-src
RUN python -m venv /opt/srd/venv \
    && /opt/srd/venv/bin/pip install /tmp/srd-src \
    && rm -rf /tmp/srd-src \
    && srd models verify

COPY config/srd.container.yaml /etc/srd/srd.yaml
RUN mkdir -p /data/inbox /data/outbox /data/failed /var/lib/srd \
    && chown srd:srd /data/inbox /data/outbox /data/failed /var/lib/srd \
    && srd config check /etc/srd/srd.yaml

VOLUME ["/data/inbox", "/data/outbox", "/data/failed", "/var/lib/srd"]
# Numeric, so a runtime (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /var/lib/srd

# 0: healthy; 3: not running; 9: running, but an inbox, its outbox or the state directory is unhealthy.
# It reads only the state_dir's status.json, so it answers while a share holding an inbox hangs.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["srd", "status", "--check", "--config", "/etc/srd/srd.yaml"]

# SIGTERM lets running jobs finish (up to --drain-timeout, 30 s): give `docker stop` more than that.
STOPSIGNAL SIGTERM
CMD ["srd", "run", "--config", "/etc/srd/srd.yaml"]
