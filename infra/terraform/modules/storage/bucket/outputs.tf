output "bucket" {
  description = "Bucket name."
  value       = aws_s3_bucket.this.bucket
}

output "arn" {
  description = "Bucket ARN (for task IAM policies)."
  value       = aws_s3_bucket.this.arn
}
