#!/usr/bin/env python3
"""Create the demo app examples/k8s_canary.rs deploys to: namespace
`relay-example` with a Deployment `web` (pods labelled app=web, one container
`app`) and a Service `web` selecting them. Reads the server, CA and token
from the kubeconfig that scripts/kube-servers.sh writes; creating what
exists already is not an error."""

import json
import re
import ssl
import sys
import urllib.error
import urllib.request


def main(kubeconfig: str) -> None:
    text = open(kubeconfig).read()
    server = re.search(r"server: (\S+)", text).group(1)
    ca = re.search(r"certificate-authority: (\S+)", text).group(1)
    token = re.search(r"token: (\S+)", text).group(1)
    ctx = ssl.create_default_context(cafile=ca)

    def post(path: str, body: dict) -> None:
        req = urllib.request.Request(
            server + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise SystemExit(f"POST {path}: {e.code} {e.read().decode()}")

    ns = "relay-example"
    post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    post(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.test/web:1"}]},
                },
            },
        },
    )
    post(
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
    )
    print(ns)


if __name__ == "__main__":
    main(sys.argv[1])
