# Multi-stage build: compile in the Rust image, run from a small Debian base as a non-root user.
# Needs BuildKit (cache mounts): the default builder since Docker 23; DOCKER_BUILDKIT=1 with Docker 20.10.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc is not needed: no cdk mint features are built into the provider.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Downloaded crates and the target dir are BuildKit cache mounts: a rebuild after a source change recompiles
# only this crate. The binary is copied out of the mount (the mount is not part of the image). It links the
# image's libsqlite3 (arti's directory cache, through libsqlite3-sys and pkg-config), which goes along with it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin paygress \
 && install -D -m 0755 target/release/paygress /out/bin/paygress \
 && strip /out/bin/paygress \
 && mkdir -p /out/lib \
 && cp -L "$(ldconfig -p | awk '$1 == "libsqlite3.so.0" {print $NF; exit}')" /out/lib/

FROM debian:bookworm-slim
# No apt-get here: the CA bundle (HTTPS mints and relays) and libsqlite3 come from the build stage (same Debian).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/lib/ /usr/local/lib/
# uid/gid 65532, as k8s/sidecar-service.yaml runs it (runAsUser, runAsGroup, fsGroup).
RUN ldconfig \
 && groupadd --system --gid 65532 paygress \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/paygress --create-home \
      --shell /usr/sbin/nologin paygress
COPY --from=build /out/bin/paygress /usr/local/bin/paygress
USER 65532:65532
ENV PAYGRESS_STATE_DIR=/var/lib/paygress \
    PAYGRESS_HTTP_ADDR=0.0.0.0:8080
VOLUME /var/lib/paygress
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/paygress"]
