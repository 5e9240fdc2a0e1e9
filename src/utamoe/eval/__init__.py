"""Evaluation: generate every task's predictions through the predictor and score them with each
task's scorer from the task registry (`run`, `scoring`), the generic scorers (`scorers`,
`span_scorers`, `metrics`) and the reports (`report`). A benchmark's own scorers come from its
plug-in (utamoe.benchmarks); the analyses of a model (gradient conflict, routing) are
utamoe.analysis."""
