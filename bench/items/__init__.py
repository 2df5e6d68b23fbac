"""One module per figure of the benchmark; each returns `ItemResult`s for the report."""
