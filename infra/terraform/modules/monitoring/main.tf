# Prometheus, Pushgateway, Alertmanager and Grafana as ECS services (the configuration of
# monitoring/ baked into their images or mounted), and CloudWatch alarms for what Prometheus
# cannot see: the load balancer and the database. Alarms go to an encrypted SNS topic that
# Alertmanager's receivers subscribe to.

data "aws_region" "current" {}

locals {
  services = {
    prometheus   = { port = 9090, cpu = 512, memory = 1024 }
    pushgateway  = { port = 9091, cpu = 256, memory = 512 }
    alertmanager = { port = 9093, cpu = 256, memory = 512 }
    grafana      = { port = 3000, cpu = 256, memory = 512 }
  }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/autotrader/${var.name}/monitoring"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_ecs_task_definition" "this" {
  #checkov:skip=CKV_AWS_336:Prometheus (TSDB), Alertmanager (silences) and Grafana (sqlite) write their data under the root filesystem of the stock images
  for_each                 = local.services
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = var.execution_role_arn
  container_definitions = jsonencode([{
    name         = each.key
    image        = var.images[each.key]
    essential    = true
    portMappings = [{ containerPort = each.value.port, protocol = "tcp" }]
    logConfiguration = {
      logDriver = "awslogs"
      options   = { awslogs-group = aws_cloudwatch_log_group.this.name, awslogs-region = data.aws_region.current.name, awslogs-stream-prefix = each.key }
    }
  }])
}

resource "aws_ecs_service" "this" {
  for_each        = local.services
  name            = "${var.name}-${each.key}"
  cluster         = var.cluster_arn
  task_definition = aws_ecs_task_definition.this[each.key].arn
  desired_count   = 1
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [var.ecs_security_group_id]
    assign_public_ip = false
  }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = var.kms_key_arn
}

locals {
  alarms = {
    alb-5xx = {
      namespace = "AWS/ApplicationELB", metric = "HTTPCode_Target_5XX_Count", stat = "Sum", threshold = 10
      dimensions = { LoadBalancer = var.alb_arn_suffix }, comparison = "GreaterThanThreshold"
    }
    alb-p99-latency = {
      namespace = "AWS/ApplicationELB", metric = "TargetResponseTime", stat = "p99", threshold = 0.2
      dimensions = { LoadBalancer = var.alb_arn_suffix }, comparison = "GreaterThanThreshold"
    }
    rds-cpu = {
      namespace = "AWS/RDS", metric = "CPUUtilization", stat = "Average", threshold = 80
      dimensions = { DBInstanceIdentifier = var.db_instance_id }, comparison = "GreaterThanThreshold"
    }
    rds-free-storage = {
      namespace = "AWS/RDS", metric = "FreeStorageSpace", stat = "Average", threshold = 5368709120
      dimensions = { DBInstanceIdentifier = var.db_instance_id }, comparison = "LessThanThreshold"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each            = local.alarms
  alarm_name          = "${var.name}-${each.key}"
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  statistic           = each.value.stat == "p99" ? null : each.value.stat
  extended_statistic  = each.value.stat == "p99" ? "p99" : null
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  dimensions          = each.value.dimensions
  period              = 300
  evaluation_periods  = 2
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
