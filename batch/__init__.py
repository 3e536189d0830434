"""The batch stage: the change history rebuilt into the offline store with the streaming job's aggregation core."""
