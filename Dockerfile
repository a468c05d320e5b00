# Multi-stage build: compile in the Rust image, run from a small Debian base as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# protoc is not needed: no cdk mint features are built into the provider.
COPY Cargo.toml Cargo.lock ./
COPY tools ./tools
COPY src ./src
RUN cargo build --release --locked --bin paygress \
 && strip target/release/paygress

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/paygress --create-home paygress
COPY --from=build /src/target/release/paygress /usr/local/bin/paygress
USER 10001:10001
ENV PAYGRESS_STATE_DIR=/var/lib/paygress \
    PAYGRESS_HTTP_ADDR=0.0.0.0:8080
VOLUME /var/lib/paygress
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/paygress"]
