# Builds every orderflow binary once; each compose service runs one of them.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir /out \
 && for b in $(target/release/topology processes) topology orderflow; do \
      cp target/release/$b /out/; done

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
RUN useradd --system --uid 10001 orderflow && mkdir /data /defs && chown orderflow /data /defs
USER orderflow
ENV ORDERFLOW_RUN_DIR=/data
