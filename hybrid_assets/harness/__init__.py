"""The measuring harness: runners record samples, statistics summarise them, the judge
combines Great Expectations' verdicts with evidence rules, and ``execute`` ties a case
together. Nothing here imports Dagster."""
