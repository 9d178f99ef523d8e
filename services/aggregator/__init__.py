"""The aggregator: runs SecAgg+ rounds over rank buckets and hands out only unmasked bucket sums."""
