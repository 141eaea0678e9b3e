environment        = "production"
aws_region         = "us-east-1"
availability_zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
vpc_cidr           = "10.30.0.0/16"
alb_ingress_cidrs  = ["0.0.0.0/0"]
certificate_arn    = "arn:aws:acm:us-east-1:123456789012:certificate/autotrader-production"
serving_domain     = "production.autotrader.example.com"

db_instance_class        = "db.r6g.large"
db_allocated_storage_gb  = 200
db_backup_retention_days = 35
redis_node_type          = "cache.r6g.large"

serving_cpu       = 1024
serving_memory    = 2048
serving_min_tasks = 2
serving_max_tasks = 10
run_cpu           = 4096
run_memory        = 16384

image_tag                = "2024.03.1"
serving_token_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:autotrader-production/serving-token"
monitoring_images = {
  prometheus   = "prom/prometheus:v2.42.0"
  pushgateway  = "prom/pushgateway:v1.5.1"
  alertmanager = "prom/alertmanager:v0.25.0"
  grafana      = "grafana/grafana:10.4.2"
}
