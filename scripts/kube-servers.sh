# Kubernetes test servers for scripts/test.sh (sourced, not run): a real
# kube-apiserver and kube-controller-manager on 127.0.0.1, built from
# Debian's kubernetes source package, with etcd from Debian.
#
# No Kubernetes server package exists in the registries this machine can
# reach, so `kube_build` fetches Debian bookworm's source package (the full
# upstream tree with vendor/) and Go 1.19 through a private apt directory
# whose sources are the machine's own Debian entries with `deb-src` added,
# and builds the two binaries in GOPATH mode (about 7 minutes on 2 cores the
# first time). The vendored modern-go/reflect2 1.0.1 is replaced by Debian's
# 1.0.2: built with Go 1.19, 1.0.1 crashes the API server (SIGSEGV in map
# iteration) as soon as it encodes a custom resource. The binaries are
# cached outside the repository, keyed by version and that patch, and
# reused.
#
# `kube_start DIR` generates a CA, a server certificate and a token for a
# `system:masters` user in DIR, starts etcd, the API server (TLS only, RBAC)
# and the controller manager (deployment, replicaset and garbage-collector
# controllers: real ReplicaSets, Pods and Deployment status; there is no
# scheduler or kubelet), waits for readiness and writes DIR/kubeconfig
# (admin) and DIR/kubeconfig-limited (a user with no permission of its own).
# Every PID goes to the caller's PIDS array, so the caller's exit trap stops
# them.

# shellcheck source=scripts/test-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/test-lib.sh"

KUBE_VERSION=1.20.2
KUBE_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
KUBE_CACHE=${RELAY_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/relay-test}/kube-$KUBE_DEB_VERSION-reflect2-1.0.2

kube_build() {
  if [ -x "$KUBE_CACHE/bin/kube-apiserver" ] && [ -x "$KUBE_CACHE/bin/kube-controller-manager" ] &&
    [ -x "$KUBE_CACHE/root/usr/bin/etcd" ]; then
    return 0
  fi
  local work
  work=$(mktemp -d)
  mkdir -p "$work/src" "$work/debs" "$work/shim" "$work/gopath/src/k8s.io" "$KUBE_CACHE/bin"
  apt_private "$work"
  (cd "$work/src" && apt-get "${APT_PRIVATE[@]}" -qq source --download-only "kubernetes=$KUBE_DEB_VERSION")
  (cd "$work/debs" && apt-get "${APT_PRIVATE[@]}" -qq download golang-1.19-go golang-1.19-src etcd-server etcd-client \
    golang-github-modern-go-reflect2-dev)
  local deb
  for deb in "$work"/debs/*.deb; do
    case "$deb" in
    *etcd*) dpkg-deb -x "$deb" "$KUBE_CACHE/root" ;;
    *) dpkg-deb -x "$deb" "$work/root" ;;
    esac
  done
  (cd "$work/src" && dpkg-source -x ./*.dsc k8s >/dev/null)
  ln -s "$work/src/k8s" "$work/gopath/src/k8s.io/kubernetes"
  rm -rf "$work/src/k8s/vendor/github.com/modern-go/reflect2"
  cp -r "$work/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$work/src/k8s/vendor/github.com/modern-go/reflect2"
  # The build scripts call `rsync -pc SRC DST`; a plain copy does the same.
  printf '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec cp -p "$1" "$2"\n' >"$work/shim/rsync"
  chmod +x "$work/shim/rsync"
  local v=k8s.io/kubernetes/vendor/k8s.io/component-base/version
  local ldflags="-s -w -X $v.gitVersion=v$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=20 -X $v.gitTreeState=clean"
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS= GOPATH="$work/gopath"
    export GOCACHE="$work/gocache" PATH="$work/shim:$work/root/usr/lib/go-1.19/bin:$PATH"
    # The generated OpenAPI definitions are not in the source tarball.
    make gen_openapi >/dev/null
    go build -o "$KUBE_CACHE/bin/kube-apiserver" -ldflags "$ldflags" ./cmd/kube-apiserver
    go build -o "$KUBE_CACHE/bin/kube-controller-manager" -ldflags "$ldflags" ./cmd/kube-controller-manager
  )
  chmod -R u+w "$work" && rm -rf "$work"
}

kube_start() {
  local dir=$1
  mkdir -p "$dir"
  local etcd_client etcd_peer api
  etcd_client=$(free_port)
  etcd_peer=$(free_port)
  api=$(free_port)
  # A CA and a server certificate for 127.0.0.1, a service-account key, a
  # static token whose user is in system:masters, and one for `relay-limited`,
  # a user with no permission until a test binds it to relay's Role
  # (docs/least-privilege/kubernetes-role.yaml) in its namespace.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=relay-test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/server.crt" 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token limited
  token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  limited=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  printf '%s,relay-admin,relay-admin,"system:masters"\n%s,relay-limited,relay-limited\n' "$token" "$limited" >"$dir/tokens.csv"
  chmod 600 "$dir"/*.key "$dir/tokens.csv"

  "$KUBE_CACHE/root/usr/bin/etcd" --data-dir "$dir/etcd" --name relay-test \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "relay-test=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  PIDS+=("$!")

  # TTLAfterFinished: Jobs a JobHook creates carry ttlSecondsAfterFinished,
  # which 1.20 drops unless the gate is on (it is on by default from 1.21).
  "$KUBE_CACHE/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api" \
    --tls-cert-file "$dir/server.crt" --tls-private-key-file "$dir/server.key" --client-ca-file "$dir/ca.crt" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$dir/sa.pub" \
    --service-account-signing-key-file "$dir/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none --disable-admission-plugins ServiceAccount \
    --feature-gates TTLAfterFinished=true \
    >"$dir/apiserver.log" 2>&1 &
  PIDS+=("$!")

  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: relay-test
  cluster:
    server: https://127.0.0.1:$api
    certificate-authority: $dir/ca.crt
users:
- name: relay-admin
  user:
    token: $token
contexts:
- name: relay-test
  context:
    cluster: relay-test
    user: relay-admin
current-context: relay-test
EOF
  sed -e "s/relay-admin/relay-limited/g" -e "s/token: $token/token: $limited/" "$dir/kubeconfig" >"$dir/kubeconfig-limited"
  chmod 600 "$dir/kubeconfig" "$dir/kubeconfig-limited"
  if ! wait_for "python3 -c \"import ssl,urllib.request as u; c=ssl.create_default_context(cafile='$dir/ca.crt'); r=u.Request('https://127.0.0.1:$api/readyz', headers={'Authorization': 'Bearer $token'}); u.urlopen(r, context=c, timeout=2)\"" 60; then
    echo "kube-apiserver did not become ready; its log:" >&2
    tail -n 40 "$dir/apiserver.log" >&2
    return 1
  fi

  "$KUBE_CACHE/bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --controllers deployment,replicaset,garbagecollector --leader-elect=false --port=0 --secure-port=0 \
    --use-service-account-credentials=false >"$dir/controller-manager.log" 2>&1 &
  PIDS+=("$!")
  KUBE_SERVER_URL="https://127.0.0.1:$api"
}
