#!/bin/sh
# Regenerates Sources/OutpostProto from proto/outpost/api/v1/*.proto.
# The generated Swift is committed, so neither ./build.sh nor CI runs this.
#
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-swift from
# apple/swift-protobuf at the version Package.swift pins (1.39.0), built once:
#   git clone https://github.com/apple/swift-protobuf /tmp/swift-protobuf
#   git -C /tmp/swift-protobuf checkout 1.39.0
#   (cd /tmp/swift-protobuf && swift build -c release --product protoc-gen-swift)   # ~10 minutes
# then either put it on PATH or set PROTOC_GEN_SWIFT to its path.
set -eu
cd "$(dirname "$0")/.."
plugin=${PROTOC_GEN_SWIFT:-$(command -v protoc-gen-swift || true)}
[ -z "$plugin" ] && [ -x /tmp/swift-protobuf/.build/release/protoc-gen-swift ] && plugin=/tmp/swift-protobuf/.build/release/protoc-gen-swift
[ -n "$plugin" ] || { echo "gen-proto.sh: protoc-gen-swift not found (set PROTOC_GEN_SWIFT; see this script's header)" >&2; exit 1; }
command -v protoc >/dev/null || { echo "gen-proto.sh: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
out=Sources/OutpostProto
rm -f "$out"/*.pb.swift
# Public visibility: OutpostController and outpostd import the module.
protoc -I proto --plugin=protoc-gen-swift="$plugin" \
    --swift_opt=Visibility=Public --swift_opt=FileNaming=DropPath \
    --swift_out="$out" proto/outpost/api/v1/*.proto
ls "$out"/*.pb.swift
