"""The loader: bus batches → dedup → hourly buckets → Parquet → manifests."""
