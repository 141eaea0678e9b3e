# One private data bucket (archive, artifacts or backups) with everything it must have: versioning,
# SSE-KMS, public access blocked, access logs into the logs bucket, a lifecycle. A module called once
# per bucket rather than a for_each over the three: checkov evaluates only the first instance of a
# for_each, so the other buckets' settings would go unchecked.

resource "aws_s3_bucket" "this" {
  bucket = var.bucket
  #checkov:skip=CKV_AWS_144:cross-region copies of backups are an operator choice (disaster-recovery.md, section 3); versioning protects against deletion
  #checkov:skip=CKV2_AWS_62:no consumer of bucket events; the platform polls its own manifests
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "this" {
  bucket        = aws_s3_bucket.this.id
  target_bucket = var.logs_bucket
  target_prefix = "s3/${var.bucket}/"
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    id     = "versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    dynamic "expiration" {
      for_each = var.expire_days > 0 ? [1] : []
      content {
        days = var.expire_days
      }
    }
  }
}
