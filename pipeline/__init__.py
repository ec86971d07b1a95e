"""ray-pipeline: Parquet on S3/MinIO -> Ray Data (CPU group) -> Ray Train (GPU group)."""

__version__ = "0.1.0"
