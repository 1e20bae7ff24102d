# One image with every orderflow binary; each compose service runs one of
# them. Dependencies are cached between builds by BuildKit cache mounts
# (cargo's registry and the target folder), so a change to the workspace
# rebuilds only orderflow's own crates.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && for b in $(target/release/topology processes --binaries) topology orderflow; do \
      cp target/release/$b /out/; done

FROM debian:12.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# /defs: the definitions volume; /secrets/<process>: each process's secret
# volume, owned by the orderflow user so that `topology export` can write them.
RUN useradd --system --uid 10001 orderflow \
 && mkdir -p /data /defs /run/orderflow \
 && for p in $(topology processes); do mkdir -p /secrets/$p; done \
 && chown -R orderflow /data /defs /secrets /run/orderflow
USER orderflow
ENV ORDERFLOW_RUN_DIR=/data
