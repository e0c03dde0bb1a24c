# rangekv: one image for every process; the verb is the command:
#   docker run rangekv:0.1.0 raftnode|metarange|gateway [flags]
# Build from the repository root:  docker build -t rangekv:0.1.0 .

# --- build: the wheel, from the sources only -----------------------------------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir "build==1.2.2.post1"
COPY pyproject.toml README.md ./
COPY libs/ libs/
COPY services/ services/
COPY cli/ cli/
RUN python -m build --wheel --outdir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels /wheels/rangekv-*.whl

# --- run: the wheel and its dependencies in a slim Python, as a non-root user ----
FROM python:3.11-slim-bookworm
# tini is PID 1: it forwards SIGTERM to rangekv (whose graceful shutdown depends
# on it) and reaps anything that exits; rangekv itself is exec'd, no shell between.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && groupadd --system --gid 10001 rangekv \
 && useradd --system --uid 10001 --gid rangekv --home-dir /data --shell /usr/sbin/nologin rangekv \
 && mkdir -p /data \
 && chown rangekv:rangekv /data
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RANGEKV_LISTEN_HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 7000 7100 8080 9090
ENTRYPOINT ["/usr/bin/tini", "--", "rangekv"]
CMD ["--help"]
