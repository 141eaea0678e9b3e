variable "bucket" {
  type        = string
  description = "Bucket name, e.g. autotrader-production-archive."
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket))
    error_message = "bucket must be a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key of the bucket's default encryption (SSE-KMS)."
}

variable "logs_bucket" {
  type        = string
  description = "Bucket that receives this bucket's access logs (under s3/<bucket>/)."
}

variable "noncurrent_days" {
  type        = number
  description = "Days a superseded object version is kept."
  validation {
    condition     = var.noncurrent_days >= 1
    error_message = "noncurrent_days must be at least 1."
  }
}

variable "expire_days" {
  type        = number
  description = "Days after which current objects expire; 0 keeps them."
  validation {
    condition     = var.expire_days >= 0
    error_message = "expire_days must be 0 (keep) or a positive number of days."
  }
}
