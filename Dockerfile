# The uuidguard daemon: `docker build -t uuidguard .`; docker-compose.yml runs it with the
# rest of the stack. Configuration through UUIDGUARD_* variables (nested keys with `__`),
# e.g. UUIDGUARD_DATABASE__DSN=postgresql://user:password@host:5432/db.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# a fixed uid, no login shell, no root at run time
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin uuidguard

WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrator ./migrator
COPY monitor ./monitor
COPY dashboards ./dashboards
RUN pip install . && rm -rf /src

USER uuidguard
WORKDIR /home/uuidguard

EXPOSE 9477

# no curl in slim images: the standard library asks /healthz
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9477/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["uuidguard"]
CMD ["serve", "--host", "0.0.0.0"]
