# MOJAVOX Notify: the server from the package, as an unprivileged user.
# Build: docker build -t mojavox-notify .   Run: see compose.yaml and docs/index.md (Installing).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mojavox_notify ./mojavox_notify
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /srv/mojavox mojavox
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /srv/mojavox
USER 10001
ENV MOJAVOX_SERVER__HOST=0.0.0.0 \
    MOJAVOX_DATA_DIR=/srv/mojavox/data \
    PYTHONUNBUFFERED=1
EXPOSE 3001
VOLUME ["/srv/mojavox/data"]
HEALTHCHECK --interval=10s --timeout=3s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3001/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["mojavox-notify", "serve"]
