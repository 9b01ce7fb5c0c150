# revalidate in a small image: built with the Rust toolchain, run on Debian slim as
# an unprivileged user.
#
#   docker build -t revalidate .
#   docker run --rm -p 8080:8080 revalidate serve \
#       --listen 0.0.0.0:8080 --upstream http://api:5000
#
# The admin API listens on loopback inside the container by default; to expose it,
# pass --admin-listen 0.0.0.0:9090 and --admin-token (it refuses to start without).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p revalidate-cli \
 && strip target/release/revalidate

FROM debian:bookworm-slim
# ca-certificates: the system's roots, for https:// upstreams and rediss://
# without a CA file. apt's lists and caches go with the layer that made them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin revalidate
COPY --from=build /src/target/release/revalidate /usr/local/bin/revalidate
COPY revalidate.example.toml /etc/revalidate/revalidate.example.toml
USER 10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/revalidate"]
CMD ["--help"]
