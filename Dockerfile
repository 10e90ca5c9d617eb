# Controller image: the gateway control plane (gatewayctl) serving ADS to Envoy.
# The same image runs the demo echo backends in docker-compose.yml.
FROM python:3.11-slim

ENV GATEWAY_DB=/data/gateway.db \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data --no-create-home gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data

# The database lives on a volume so policy survives container replacement; the controller
# must load it before answering any Envoy stream.
VOLUME /data
WORKDIR /data
USER gateway

# 18000: xDS (ADS over gRPC) for Envoy; 18001: controller health HTTP (/healthz).
EXPOSE 18000 18001

CMD ["gatewayctl", "serve", "--create", "--db", "/data/gateway.db", "--xds-address", "0.0.0.0:18000", "--health-address", "0.0.0.0:18001"]
