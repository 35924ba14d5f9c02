#!/usr/bin/env python3
"""Stand-ins for what the test servers lack, so the examples can run a whole
rollout against them (scripts/test.sh starts one in the background and stops
it by its PID):

  stand-ins.py ecs ENDPOINT CLUSTER SERVICE
      moto neither starts a task set's tasks nor registers them with its
      target group: every 0.2 s, give each task set's target group one
      healthy IP target per task the set asks for (the scale percent of the
      service's desired count, rounded up, as ECS computes it), and none to
      a group no task set uses.

  stand-ins.py kubelet KUBECONFIG NAMESPACE
      the test cluster has no kubelet: every 0.2 s, mark the namespace's
      pods Running and Ready.

Both run until killed.
"""

import datetime
import json
import math
import re
import ssl
import sys
import time
import urllib.error
import urllib.request


def ecs(endpoint: str, cluster: str, service: str) -> None:
    import boto3

    def client(name):
        return boto3.client(
            name,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    ecs_api, elb = client("ecs"), client("elbv2")
    known_groups = set()
    while True:
        svc = ecs_api.describe_services(cluster=cluster, services=[service])["services"][0]
        wanted = {}
        for ts in svc.get("taskSets", []):
            if ts.get("status") == "DRAINING" or not ts.get("loadBalancers"):
                continue
            group = ts["loadBalancers"][0]["targetGroupArn"]
            pct = ts.get("scale", {}).get("value", 0.0)
            wanted[group] = max(0, math.ceil(svc["desiredCount"] * pct / 100.0 - 1e-9))
        known_groups.update(wanted)
        for index, group in enumerate(sorted(known_groups)):
            want = [f"10.9.{index}.{k}" for k in range(1, wanted.get(group, 0) + 1)]
            have = [d["Target"]["Id"] for d in elb.describe_target_health(TargetGroupArn=group)["TargetHealthDescriptions"]]
            extra = [{"Id": i, "Port": 8080} for i in have if i not in want]
            missing = [{"Id": i, "Port": 8080} for i in want if i not in have]
            if extra:
                elb.deregister_targets(TargetGroupArn=group, Targets=extra)
            if missing:
                elb.register_targets(TargetGroupArn=group, Targets=missing)
        time.sleep(0.2)


def kubelet(kubeconfig: str, namespace: str) -> None:
    text = open(kubeconfig).read()
    server = re.search(r"server: (\S+)", text).group(1)
    ca = re.search(r"certificate-authority: (\S+)", text).group(1)
    token = re.search(r"token: (\S+)", text).group(1)
    ctx = ssl.create_default_context(cafile=ca)

    def call(method: str, path: str, body=None, content_type="application/json"):
        req = urllib.request.Request(
            server + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            method=method,
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read())

    while True:
        pods = call("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        for pod in pods:
            status = pod.get("status", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            if ready or pod["metadata"].get("deletionTimestamp"):
                continue
            now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            patch = {
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": [
                        {
                            "name": c["name"],
                            "image": c.get("image", ""),
                            "imageID": "",
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": now}},
                        }
                        for c in pod["spec"]["containers"]
                    ],
                }
            }
            try:
                call(
                    "PATCH",
                    f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
                    patch,
                    "application/merge-patch+json",
                )
            except urllib.error.HTTPError as e:
                # A pod deleted meanwhile is no error.
                if e.code != 404:
                    raise
        time.sleep(0.2)


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    {"ecs": ecs, "kubelet": kubelet}[kind](*args)
