output "cluster_name" {
  description = "ECS cluster of serving, Dagster and monitoring."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "listener_arn" {
  description = "HTTPS listener whose weights the deployer switches."
  value       = aws_lb_listener.https.arn
}

output "blue_target_group_arn" {
  description = "Target group of the blue slot."
  value       = aws_lb_target_group.slot["blue"].arn
}

output "green_target_group_arn" {
  description = "Target group of the green slot."
  value       = aws_lb_target_group.slot["green"].arn
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (point serving_domain and its blue./green. names at it)."
  value       = aws_lb.this.dns_name
}

output "alb_arn_suffix" {
  description = "ARN suffix of the load balancer (CloudWatch dimension)."
  value       = aws_lb.this.arn_suffix
}

output "slot_endpoints" {
  description = "URL of each slot through its listener rule (the deployer's probes)."
  value       = { for slot in ["blue", "green"] : slot => "https://${slot}.${var.serving_domain}" }
}

output "repository_urls" {
  description = "ECR repositories of the serving and code-location images."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "service_prefix" {
  description = "Prefix of the serving services (<prefix>-blue, <prefix>-green) the deployer creates and autoscaling scales."
  value       = "${var.name}-serving"
}

output "serving_port" {
  description = "Port the slot target groups forward to (EcsDeployerConfig.container_port)."
  value       = var.serving_port
}
