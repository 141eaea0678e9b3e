output "vpc_id" {
  description = "The VPC."
  value       = aws_vpc.this.id
}

output "public_subnet_ids" {
  description = "Public subnets (ALB, NAT gateways), one per zone."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets (tasks, RDS, Redis, EFS), one per zone."
  value       = aws_subnet.private[*].id
}

output "nat_gateway_ids" {
  description = "One NAT gateway per zone."
  value       = aws_nat_gateway.this[*].id
}

output "alb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "ecs_security_group_id" {
  description = "Security group of every ECS task."
  value       = aws_security_group.ecs.id
}

output "rds_security_group_id" {
  description = "Security group of the PostgreSQL instance."
  value       = aws_security_group.rds.id
}

output "redis_security_group_id" {
  description = "Security group of the Redis replication group."
  value       = aws_security_group.redis.id
}

output "efs_security_group_id" {
  description = "Security group of the warehouse's EFS mount targets."
  value       = aws_security_group.efs.id
}
