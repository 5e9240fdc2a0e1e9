"""Analysis of a trained model, apart from scoring: where the understanding and generation
gradients conflict (`conflict`), where each task's tokens are routed (`routing`), MoME's
routers per task (`mome`); `run` builds the batches and runs them (`utamoe analyze`), `report`
writes the tables and figures."""
