# syntax=docker/dockerfile:1
# The operator image: `tandem` on PATH, run as the non-root uid 65532 the chart expects.
#   docker build -t tandem-operator:dev -f Dockerfile .

ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY operator operator
COPY testkit testkit
COPY e2e e2e
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tandem --bin tandem \
    && install -D -m 0755 target/release/tandem /out/tandem

# distroless/cc: glibc and libgcc only, no shell; "nonroot" is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tandem /usr/local/bin/tandem
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["tandem"]
CMD ["operator"]
