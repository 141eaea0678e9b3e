# One VPC over three availability zones: public subnets hold the load balancer and one NAT
# gateway per zone (a zone outage never cuts the others off the internet); private subnets hold
# every task, the database, Redis and EFS. Security groups allow only the paths the platform uses.

locals {
  public_cidrs  = [for i in range(3) : cidrsubnet(var.vpc_cidr, 4, i)]
  private_cidrs = [for i in range(3) : cidrsubnet(var.vpc_cidr, 4, i + 8)]
}

data "aws_region" "current" {}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # ECS awsvpc tasks and the interface endpoints need DNS hostnames
  tags                 = { Name = var.name }
}

# Nothing may use the default security group: it is emptied.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_flow_log" "this" {
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow.arn
  iam_role_arn    = aws_iam_role.flow.arn
}

resource "aws_cloudwatch_log_group" "flow" {
  name              = "/autotrader/${var.name}/vpc-flow"
  retention_in_days = var.flow_log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_iam_role" "flow" {
  name = "${var.name}-vpc-flow"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "vpc-flow-logs.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy" "flow" {
  name = "write-flow-logs"
  role = aws_iam_role.flow.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = "${aws_cloudwatch_log_group.flow.arn}:*"
    }]
  })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "public" {
  count             = 3
  vpc_id            = aws_vpc.this.id
  cidr_block        = local.public_cidrs[count.index]
  availability_zone = var.availability_zones[count.index]
  # Public subnets hold only the ALB and the NAT gateways (which have Elastic IPs); no instance
  # or task gets a public address.
  map_public_ip_on_launch = false
  tags                    = { Name = "${var.name}-public-${var.availability_zones[count.index]}", Tier = "public" }
}

resource "aws_subnet" "private" {
  count             = 3
  vpc_id            = aws_vpc.this.id
  cidr_block        = local.private_cidrs[count.index]
  availability_zone = var.availability_zones[count.index]
  tags              = { Name = "${var.name}-private-${var.availability_zones[count.index]}", Tier = "private" }
}

resource "aws_eip" "nat" {
  count  = 3
  domain = "vpc"
}

resource "aws_nat_gateway" "this" {
  count         = 3
  allocation_id = aws_eip.nat[count.index].id
  subnet_id     = aws_subnet.public[count.index].id
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
}

resource "aws_route_table_association" "public" {
  count          = 3
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# One private route table per zone, each through the NAT gateway of its own zone.
resource "aws_route_table" "private" {
  count  = 3
  vpc_id = aws_vpc.this.id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this[count.index].id
  }
}

resource "aws_route_table_association" "private" {
  count          = 3
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[count.index].id
}

# S3 (archive, artifacts, backups, compute logs, ECR layers) through a gateway endpoint: no NAT
# traffic, and bucket policies can require the VPC.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = aws_route_table.private[*].id
}

resource "aws_vpc_endpoint" "ecr" {
  for_each            = toset(["ecr.api", "ecr.dkr"])
  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${data.aws_region.current.name}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true
}

resource "aws_security_group" "alb" {
  #checkov:skip=CKV2_AWS_5:attached in another module (compute, dagster, monitoring, storage) through this module's outputs; checkov does not follow module outputs
  name        = "${var.name}-alb"
  description = "Load balancer: HTTPS from the allowed ranges"
  vpc_id      = aws_vpc.this.id
  ingress {
    description = "HTTPS from clients and operators"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.alb_ingress_cidrs
  }
  egress {
    description = "To the tasks in the private subnets"
    from_port   = 0
    to_port     = 65535
    protocol    = "tcp"
    cidr_blocks = local.private_cidrs
  }
}

resource "aws_security_group" "ecs" {
  #checkov:skip=CKV2_AWS_5:attached in another module (compute, dagster, monitoring, storage) through this module's outputs; checkov does not follow module outputs
  name        = "${var.name}-ecs"
  description = "ECS tasks: serving, Dagster, monitoring; reachable from the ALB and from each other"
  vpc_id      = aws_vpc.this.id
  ingress {
    description     = "Serving, Dagster webserver and Grafana from the ALB"
    from_port       = 3000
    to_port         = var.serving_port
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
  ingress {
    description = "Task to task: code-location gRPC, Prometheus scrapes, Pushgateway, Alertmanager"
    from_port   = 0
    to_port     = 65535
    protocol    = "tcp"
    self        = true
  }
  egress {
    description = "HTTPS to AWS APIs, ECR, exchanges and brokers (through the NAT gateways)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description = "Inside the VPC: PostgreSQL, Redis, EFS and the other tasks"
    from_port   = 0
    to_port     = 65535
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_security_group" "rds" {
  #checkov:skip=CKV2_AWS_5:attached in another module (compute, dagster, monitoring, storage) through this module's outputs; checkov does not follow module outputs
  name        = "${var.name}-rds"
  description = "PostgreSQL: only from the ECS tasks"
  vpc_id      = aws_vpc.this.id
  ingress {
    description     = "PostgreSQL from ECS tasks"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.ecs.id]
  }
}

resource "aws_security_group" "redis" {
  #checkov:skip=CKV2_AWS_5:attached in another module (compute, dagster, monitoring, storage) through this module's outputs; checkov does not follow module outputs
  name        = "${var.name}-redis"
  description = "Redis: only from the ECS tasks"
  vpc_id      = aws_vpc.this.id
  ingress {
    description     = "Redis (TLS) from ECS tasks"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [aws_security_group.ecs.id]
  }
}

resource "aws_security_group" "efs" {
  #checkov:skip=CKV2_AWS_5:attached in another module (compute, dagster, monitoring, storage) through this module's outputs; checkov does not follow module outputs
  name        = "${var.name}-efs"
  description = "EFS (the warehouse mount): only from the ECS tasks"
  vpc_id      = aws_vpc.this.id
  ingress {
    description     = "NFS from ECS tasks"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [aws_security_group.ecs.id]
  }
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-endpoints"
  description = "Interface VPC endpoints (ECR): HTTPS from the VPC"
  vpc_id      = aws_vpc.this.id
  ingress {
    description = "HTTPS from the VPC"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}
