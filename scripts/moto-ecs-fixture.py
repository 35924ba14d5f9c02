"""Create, on a moto server, what examples/ecs_canary.rs deploys to: two ECR
images (v1, v2), an ALB with a listener and two target groups in the default VPC, an
ECS cluster, a Fargate task definition family and a service on the EXTERNAL
deployment controller. Prints the example's settings as `export` lines.

Usage: python3 scripts/moto-ecs-fixture.py http://127.0.0.1:PORT
"""

import json
import sys
import uuid

import boto3


def main(endpoint: str) -> None:
    def client(service):
        return boto3.client(
            service,
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    name = "demo-" + uuid.uuid4().hex[:8]
    ecr, ec2, elb, ecs = client("ecr"), client("ec2"), client("elbv2"), client("ecs")

    ecr.create_repository(repositoryName=f"{name}/web")
    # moto derives an image digest from its layer digests.
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": "sha256:" + "c" * 64},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1, "digest": "sha256:" + uuid.uuid4().hex * 2}],
    }
    ecr.put_image(repositoryName=f"{name}/web", imageTag="v1", imageManifest=json.dumps(manifest))
    manifest["layers"][0]["digest"] = "sha256:" + uuid.uuid4().hex * 2
    ecr.put_image(repositoryName=f"{name}/web", imageTag="v2", imageManifest=json.dumps(manifest))

    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    vpc = subnets[0]["VpcId"]
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"][0]["GroupId"]
    subnet_ids = [s["SubnetId"] for s in subnets[:2]]

    lb = elb.create_load_balancer(Name=name, Subnets=subnet_ids)["LoadBalancers"][0]["LoadBalancerArn"]
    groups = [
        elb.create_target_group(Name=f"{name}-{c}", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        for c in ("blue", "green")
    ]
    listener = elb.create_listener(
        LoadBalancerArn=lb,
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": groups[0]}],
    )["Listeners"][0]["ListenerArn"]

    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(
        family=name,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": "web", "image": "registry.invalid/web:template", "essential": True, "memory": 512, "portMappings": [{"containerPort": 8080}]}
        ],
    )
    ecs.create_service(cluster=name, serviceName=name, desiredCount=0, deploymentController={"type": "EXTERNAL"})

    settings = {
        "RELAY_ECS_CLUSTER": name,
        "RELAY_ECS_SERVICE": name,
        "RELAY_ECS_CONTAINER": "web",
        "RELAY_ECS_PORT": "8080",
        "RELAY_ECS_TEMPLATE_FAMILY": name,
        "RELAY_LISTENER_ARN": listener,
        "RELAY_TARGET_GROUPS": ",".join(groups),
        "RELAY_SUBNETS": ",".join(subnet_ids),
        "RELAY_SECURITY_GROUPS": group,
        "RELAY_IMAGE": f"{name}/web:v1",
        # The next release, for a canary after the first.
        "RELAY_IMAGE_NEXT": f"{name}/web:v2",
    }
    for key, value in settings.items():
        print(f"export {key}='{value}'")


if __name__ == "__main__":
    main(sys.argv[1])
