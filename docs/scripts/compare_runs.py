"""Compare two run folders' databases on everything a result depends on (no timestamps, durations
or paths): stages, candidates (latents, texts, verdicts, totals, decisions, reasons), scores,
zones and metrics. Used to check that a refactor changes no result:

    git checkout OLD && python run.py --generations 2 --out /tmp/old [settings]
    git checkout NEW && python run.py --generations 2 --out /tmp/new [same settings]
    python docs/scripts/compare_runs.py /tmp/old /tmp/new
"""
import sqlite3
import sys

QUERIES = {
    "stages": "SELECT generation, name FROM stage ORDER BY generation, name",
    "candidates": "SELECT id, generation, seq, sampler, zone_id, hex(latent), density_score, text, verdict, fact_key, "
                  "true_new, total, decision, reason FROM candidate ORDER BY id",
    "scores": "SELECT candidate_id, judge, score, reason FROM score ORDER BY candidate_id, judge",
    "zones": "SELECT generation, label, n_points, hex(centre), radius, decoded FROM zone ORDER BY generation, label",
    "metrics": "SELECT generation, acceptance_rate, truth_rate, true_new, accepted, heldout_ppl, novelty "
               "FROM metric ORDER BY generation",
}


def content(run_dir: str) -> dict:
    con = sqlite3.connect(f"{run_dir}/runs.db")
    try:
        return {k: con.execute(q).fetchall() for k, q in QUERIES.items()}
    finally:
        con.close()


if __name__ == "__main__":
    a, b = content(sys.argv[1]), content(sys.argv[2])
    for k in QUERIES:
        print(f"{k}: {len(a[k])} rows, {'same' if a[k] == b[k] else 'DIFFERENT'}")
    sys.exit(0 if a == b else 1)
