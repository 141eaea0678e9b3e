output "alarm_topic_arn" {
  description = "SNS topic of the CloudWatch alarms (subscribe Alertmanager's receivers or on-call)."
  value       = aws_sns_topic.alarms.arn
}

output "alarm_names" {
  description = "The CloudWatch alarms (the runbooks name them)."
  value       = [for a in aws_cloudwatch_metric_alarm.this : a.alarm_name]
}
