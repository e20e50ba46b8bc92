#!/usr/bin/env bash
# Creates the AWS security group the cluster runs in: every port open between members of the
# group (Ray's GCS 6379, dashboard 8265, client 10001, worker ports, MLflow 5000), SSH 22 open
# to one CIDR (yours), nothing else open to anyone.
#
# Why not let `ray up` make the group: Ray's AWS launcher adds SSH from 0.0.0.0/0 to every
# group it creates, on top of any rules in `provider.security_group`. A group made here and
# named in each node type's `SecurityGroupIds` is used as it is.
#
# Usage: bash cluster/aws_security_group.sh --region REGION --cidr YOUR.IP.AD.DR/32
#                                           [--vpc-id VPC] [--name NAME]
# Prints the new group's id; put it in ray_cluster.yaml (SecurityGroupIds of every node type).
set -euo pipefail

region=""
cidr=""
vpc_id=""
name="hdetach-study-ray"
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --cidr) cidr="$2"; shift 2 ;;
    --vpc-id) vpc_id="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    *) echo "aws_security_group.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

if [ -z "$region" ] || [ -z "$cidr" ]; then
  echo "aws_security_group.sh: --region and --cidr are required" \
    "(your address: curl -s https://checkip.amazonaws.com, then append /32)" >&2
  exit 2
fi
if ! [[ "$cidr" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/([0-9]|[12][0-9]|3[0-2])$ ]]; then
  echo "aws_security_group.sh: --cidr must be an IPv4 CIDR such as 203.0.113.7/32, got '$cidr'" >&2
  exit 2
fi
prefix="${cidr#*/}"
if [ "$prefix" -lt 16 ]; then
  echo "aws_security_group.sh: --cidr $cidr opens SSH to more than a /16; give your own" \
    "address (/32) or your office range" >&2
  exit 2
fi

if [ -z "$vpc_id" ]; then
  vpc_id="$(aws ec2 describe-vpcs --region "$region" --filters Name=isDefault,Values=true \
    --query 'Vpcs[0].VpcId' --output text)"
  if [ -z "$vpc_id" ] || [ "$vpc_id" = "None" ]; then
    echo "aws_security_group.sh: region $region has no default VPC; pass --vpc-id" >&2
    exit 2
  fi
fi

sg_id="$(aws ec2 create-security-group --region "$region" --vpc-id "$vpc_id" \
  --group-name "$name" \
  --description "hdetach-study Ray cluster: all ports within the group, SSH from one CIDR" \
  --query GroupId --output text)"

# Members of the group reach each other on every port; no address outside it does.
aws ec2 authorize-security-group-ingress --region "$region" --group-id "$sg_id" \
  --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg_id}]" >/dev/null
# SSH, the only way in from outside: `ray up`, `ray dashboard`, `ray exec`, `ssh -L` tunnels.
aws ec2 authorize-security-group-ingress --region "$region" --group-id "$sg_id" \
  --protocol tcp --port 22 --cidr "$cidr" >/dev/null

echo "$sg_id"
echo "Security group $sg_id ($name) in $vpc_id: all traffic within the group, SSH from $cidr." >&2
echo "Set SecurityGroupIds: [\"$sg_id\"] in every node type of ray_cluster.yaml." >&2
