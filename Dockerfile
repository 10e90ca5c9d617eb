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

# 18000: xDS (ADS over gRPC, mutual TLS) for Envoy. The health/metrics HTTP port (18001)
# stays on the container's loopback. The certificates come from `gatewayctl pki` (the `pki`
# service of docker-compose.yml mounts them at /pki); without them the controller refuses
# to start rather than serve xDS in plaintext on the network.
EXPOSE 18000

CMD ["gatewayctl", "serve", "--create", "--db", "/data/gateway.db", "--xds-address", "0.0.0.0:18000", "--health-address", "127.0.0.1:18001", "--xds-tls-cert", "/pki/controller.pem", "--xds-tls-key", "/pki/controller.key", "--xds-client-ca", "/pki/ca.pem", "--admin-address", "0.0.0.0:18004", "--admin-tls-cert", "/pki/controller.pem", "--admin-tls-key", "/pki/controller.key"]
