# ECS cluster (Container Insights), the serving image repositories, and the blue/green serving
# entry point: one ALB, two target groups (health check /ready), an HTTPS listener whose default
# action forwards to both with weights (the deployer, deploy_ops/slots/ecs/deployer.py, switches
# them), and listener rules blue.<domain>/green.<domain> that reach one slot each. The serving
# services and task definitions themselves are created by the deployer (provisioning.py).

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]
}

resource "aws_ecr_repository" "this" {
  for_each             = toset(["serving", "code-location"])
  name                 = "${var.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE" # a version tag always names the same image
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }
}

resource "aws_lb" "this" {
  name                       = substr(var.name, 0, 32)
  load_balancer_type         = "application"
  internal                   = false # clients of the serving API are outside the VPC; the SG limits them
  subnets                    = var.public_subnet_ids
  security_groups            = [var.alb_security_group_id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  access_logs {
    bucket  = var.logs_bucket
    prefix  = "alb"
    enabled = true
  }
  #checkov:skip=CKV2_AWS_28:a WAF is put in front per deployment (the serving API needs a bearer token and the SG limits the sources)
}

resource "aws_lb_target_group" "slot" {
  for_each    = toset(["blue", "green"])
  name        = substr("${var.name}-${each.key}", 0, 32)
  port        = var.serving_port
  protocol    = "HTTP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    path                = "/ready"
    matcher             = "200"
    interval            = 15
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  deregistration_delay = 30
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type = "forward"
    forward {
      target_group {
        arn    = aws_lb_target_group.slot["blue"].arn
        weight = 100
      }
      target_group {
        arn    = aws_lb_target_group.slot["green"].arn
        weight = 0
      }
    }
  }
  # The deployer owns the weights after the first apply.
  lifecycle {
    ignore_changes = [default_action]
  }
}

resource "aws_lb_listener_rule" "slot" {
  for_each     = { blue = 10, green = 20 }
  listener_arn = aws_lb_listener.https.arn
  priority     = each.value
  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.slot[each.key].arn
  }
  condition {
    host_header {
      values = ["${each.key}.${var.serving_domain}"]
    }
  }
}

# Autoscaling of the two serving services the deployer creates (service names
# <service_prefix>-blue / -green): on CPU, within the environment's bounds.
resource "aws_appautoscaling_target" "slot" {
  for_each           = toset(["blue", "green"])
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${var.name}-serving-${each.key}"
  min_capacity       = var.serving_min_tasks
  max_capacity       = var.serving_max_tasks
}

resource "aws_appautoscaling_policy" "slot_cpu" {
  for_each           = aws_appautoscaling_target.slot
  name               = "${var.name}-serving-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = each.value.service_namespace
  scalable_dimension = each.value.scalable_dimension
  resource_id        = each.value.resource_id
  target_tracking_scaling_policy_configuration {
    target_value = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
