# Mission Control control plane: a wheel built in one stage, installed alone in the next.
#   docker build -t mission-control .
#   docker run --rm -p 50051:50051 mission-control serve --listen 0.0.0.0:50051 --etcd etcd:2379
# The image holds no etcd: give it a cluster with --etcd (deploy/compose.yaml starts one).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.6.1
COPY pyproject.toml README.md LICENSE ./
COPY protos protos
COPY client client
COPY interceptors interceptors
COPY server server
RUN python -m build --wheel --outdir /dist .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MISSION_CONTROL_SERVER=127.0.0.1:50051
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mission-control
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist
USER 10001
EXPOSE 50051
# grpc.health.v1: the process answers and the control plane reaches etcd
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["mission-control", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["mission-control"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--etcd", "etcd:2379"]
