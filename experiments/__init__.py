"""The idea's own experiments (`python run.py experiment {discovery,holdout}`).

discovery: the same decode budget for each registered sampler (latent.samplers), judged by the
  loop's judges and combiner; per sampler: decoded, parseable, true, true-and-new, accepted,
  novelty, with 95% confidence intervals over seeds, and a 2-D picture of the latent space.
holdout: the NN1/NN2 test. NN1 = SLLM trained without topic T; NN2 = NN1 continued on the corpus
  with T. T's texts encoded by NN2: what share falls in NN1's dark zones; decoded by NN1's and by
  NN2's decoder: how alike the two decodes are, and how close to the originals. A control topic
  that NN1 did see is measured beside it. On a domain with a held-out knowledge set
  (holdout_knowledge; molecules: the MOSES scaffold-test molecules): NN1 = a run's generation 0,
  T = that set (NN2 continued on part A, part B measured), control = the domain's control set.

Each prints a table, writes JSON, and stores an ExperimentRun row plus one ExperimentSample row
per decoded text in the run folder's database (`python run.py inspect RUN_DIR experiments`).
"""
# The names the rest of the project uses; each experiment lives in its own module.
from experiments.cli import CHOICES, main
from experiments.common import ci95, plain_table
from experiments.discovery import DISCOVERY_COLUMNS, all_samplers, discovery, discovery_table, summarise_discovery
from experiments.holdout import holdout, holdout_table
from experiments.holdout_knowledge import holdout_knowledge, holdout_knowledge_table

__all__ = ["CHOICES", "DISCOVERY_COLUMNS", "all_samplers", "ci95", "discovery", "discovery_table", "holdout", "holdout_knowledge",
           "holdout_knowledge_table", "holdout_table",
           "main", "plain_table", "summarise_discovery"]
