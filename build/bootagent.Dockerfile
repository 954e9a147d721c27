# The boot agent: needs Debian's tgt (tgtd, tgtadm), ipxe (boot files served
# over TFTP and HTTP) and qemu-utils (image conversion).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
# go.mod replaces github.com/pin/tftp/v3 with the fork in third_party/tftp.
COPY third_party/ third_party/
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /bootagent ./cmd/bootagent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends tgt ipxe qemu-utils \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /bootagent /usr/local/bin/bootagent
ENTRYPOINT ["/usr/local/bin/bootagent"]
