# The switchyard image of deploy/kubernetes:  docker build -t switchyard:latest .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/switchyard --create-home switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
USER 10001
WORKDIR /var/lib/switchyard
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve"]
