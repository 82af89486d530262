#!/usr/bin/env bash
# Builds Ferry's pinned test and development tools from Go modules, once.
#
# Each tool group is its own Go module under tools/<group>. Its binaries are
# built into $FERRY_TOOLS_DIR/<group>-<hash of go.mod, go.sum and this recipe>
# and linked from $FERRY_TOOLS_DIR/bin. A group is rebuilt only when its pin
# (go.mod/go.sum) or recipe changes, so a second run costs a few seconds.
#
# Usage: tools/build.sh [group...]   (default: all groups)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${FERRY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/tools}
mkdir -p "$dir/bin"

k8s_version=v1.37.2
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"

# recipe GROUP prints the build command for a group; its text is part of the cache key.
recipe() {
  case $1 in
    go)    echo "go build -trimpath -ldflags='-s -w' -o \"\$out/\" github.com/bufbuild/buf/cmd/buf google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc github.com/fullstorydev/grpcurl/cmd/grpcurl helm.sh/helm/v3/cmd/helm" ;;
    etcd)  echo "go build -trimpath -ldflags='-s -w' -o \"\$out/etcd\" go.etcd.io/etcd/server/v3" ;;
    kube)  echo "CGO_ENABLED=0 go build -trimpath -ldflags='$kube_ldflags' -o \"\$out/\" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl" ;;
    vault) echo "go build -trimpath -ldflags='-s -w' -o \"\$out/vault\" github.com/hashicorp/vault" ;;
    spire) echo "go build -trimpath -ldflags='-s -w' -o \"\$out/\" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent" ;;
    prom)  echo "go build -trimpath -ldflags='-s -w' -o \"\$out/promtool\" github.com/prometheus/prometheus/cmd/promtool" ;;
    *) echo "unknown tool group: $1" >&2; return 1 ;;
  esac
}

build_group() {
  local group=$1 key out cmd start
  cmd=$(recipe "$group")
  key=$( { cat "$here/$group/go.mod" "$here/$group/go.sum"; echo "$cmd"; go env GOVERSION; } | sha256sum | cut -c1-16)
  out="$dir/$group-$key"
  if [ ! -f "$out/.done" ]; then
    echo "tools: building $group (first time only; this can take many minutes)" >&2
    start=$(date +%s)
    rm -rf "$out" && mkdir -p "$out"
    (cd "$here/$group" && out="$out" eval "$cmd")
    touch "$out/.done"
    echo "tools: built $group in $(( $(date +%s) - start ))s" >&2
  fi
  local f
  for f in "$out"/*; do ln -sfn "$f" "$dir/bin/$(basename "$f")"; done
}

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(go etcd kube vault spire prom)
for g in "${groups[@]}"; do build_group "$g"; done
echo "$dir/bin"
