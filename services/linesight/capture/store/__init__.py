"""Local storage of the capture service: the on-disk frame spool (frames go to S3 via ObjectStore)."""
