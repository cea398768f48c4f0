#!/bin/sh
# Generates the etcd v3 gRPC C++ stubs from the .proto files Debian ships (golang-etcd-server-dev
# and the gogo / googleapis imports), into OUTDIR/gen, and a flat
# wrapper unit per generated source (meson outputs cannot name subfolders).
# Usage: gen_protos.sh PROTOC GRPC_CPP_PLUGIN OUTDIR
set -eu
protoc=$1 plugin=$2 out=$3
go=/usr/share/gocode/src
inc_etcd=$go/go.etcd.io
inc_gogo=$go/github.com/gogo/protobuf
inc_gapi=$go/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis
for f in "$inc_etcd/etcd/etcdserver/etcdserverpb/rpc.proto" "$inc_gogo/gogoproto/gogo.proto" \
         "$inc_gapi/google/api/annotations.proto"; do
  [ -f "$f" ] || { echo "gen_protos: missing $f (scripts/setup installs it)" >&2; exit 1; }
done
protos="etcd/etcdserver/etcdserverpb/rpc.proto etcd/mvcc/mvccpb/kv.proto
        etcd/auth/authpb/auth.proto gogoproto/gogo.proto google/api/annotations.proto
        google/api/http.proto"
rm -rf "$out/gen" && mkdir -p "$out/gen"
# shellcheck disable=SC2086
"$protoc" -I"$inc_etcd" -I"$inc_gogo" -I"$inc_gapi" -I/usr/include \
  --cpp_out="$out/gen" --grpc_out="$out/gen" --plugin=protoc-gen-grpc="$plugin" $protos
# One wrapper unit per generated source, each named flat (etcd_<base>.pb.cc) for meson.
for p in $protos etcd/etcdserver/etcdserverpb/rpc.grpc; do
  b=${p%.proto}
  n=$(basename "$b")
  echo "#include \"gen/$b.pb.cc\"" > "$out/etcd_$n.pb.cc.tmp"
  mv "$out/etcd_$n.pb.cc.tmp" "$out/etcd_$n.pb.cc"
done
echo "#include \"gen/etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h\"" > "$out/etcd_rpc.grpc.hh.tmp"
mv "$out/etcd_rpc.grpc.hh.tmp" "$out/etcd_rpc.grpc.hh"
