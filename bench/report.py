"""BENCHMARKS.md and its PNG plots, rendered from one latest.json (bench.run)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

from bench import machine_state  # noqa: E402

# (key, what, baseline key or None, target as text, met(result) or None)
ROWS = [
    (
        "freshness_p50_s",
        "freshness p50 (s), COMMIT -> get_online_features",
        None,
        "<= 1 s",
        lambda r: r["freshness_p50_s"] <= 1,
    ),
    ("freshness_p99_s", "freshness p99 (s)", None, "<= 2 s", lambda r: r["freshness_p99_s"] <= 2),
    (
        "capacity_changes_per_s",
        "capacity (changes/s held 3 min)",
        "capture_changes_per_s",
        ">= 0.9x capture",
        lambda r: r["capacity_changes_per_s"] >= 0.9 * r["capture_changes_per_s"],
    ),
    ("capture_changes_per_s", "capture: Debezium into Kafka (changes/s, source at its top rate)", None, "", None),
    (
        "archive_changes_per_s",
        "changelog archive: the archiver on a backlog (changes/s, first write to last)",
        "capture_changes_per_s",
        ">= capture",
        lambda r: r["archive_changes_per_s"] >= r["capture_changes_per_s"],
    ),
    (
        "archive_behind_capture_s",
        "archive behind Kafka at the end of the capture run (s, all on the same cores)",
        None,
        "",
        None,
    ),
    (
        "stream_drain_changes_per_s",
        "streaming job drain of a pre-filled topic, 2 cores (changes/s)",
        None,
        ">= 20,000 per core",
        lambda r: r["stream_drain_changes_per_s"] >= 40_000,
    ),
    (
        "stream_cpu_us_per_change",
        "streaming job CPU per change (us)",
        None,
        "<= 50",
        lambda r: r["stream_cpu_us_per_change"] <= 50,
    ),
    ("stream_scaling_ratio", "drain with 2 cores / with 1", None, "", None),
    (
        "metrics_overhead_pct",
        "how much slower the 2-core drain runs with metrics and feature checks (%)",
        None,
        "< 3",
        lambda r: r["metrics_overhead_pct"] < 3,
    ),
    ("metrics_scrape_ms", "a Prometheus scrape under load, the slowest endpoint's p99 (ms)", None, "", None),
    ("stream_state_bytes_per_entity", "state store bytes per entity after the drain", None, "", None),
    (
        "online_read_1_p50_ms",
        "online read, 1 entity, p50 (ms)",
        "online_read_1_raw_p50_ms",
        "<= 1.3x raw",
        lambda r: r["online_read_1_p50_ms"] <= 1.3 * r["online_read_1_raw_p50_ms"],
    ),
    ("online_read_1_p99_ms", "online read, 1 entity, p99 (ms)", None, "", None),
    ("online_read_1_feast_p50_ms", "Feast get_online_features, 1 entity, p50 (ms)", None, "", None),
    (
        "online_read_100_p50_ms",
        "online read, 100 entities, p50 (ms)",
        "online_read_100_raw_p50_ms",
        "<= 1.3x raw",
        lambda r: r["online_read_100_p50_ms"] <= 1.3 * r["online_read_100_raw_p50_ms"],
    ),
    ("online_read_100_p99_ms", "online read, 100 entities, p99 (ms)", None, "", None),
    ("online_read_100_feast_p50_ms", "Feast get_online_features, 100 entities, p50 (ms)", None, "", None),
    (
        "write_rows_per_s",
        "online writes (rows/s)",
        "write_feast_push_rows_per_s",
        ">= 100,000",
        lambda r: r["write_rows_per_s"] >= 100_000,
    ),
    (
        "pit_s",
        "point-in-time training set (s)",
        None,
        "1M rows <= 30 s (scaled linearly)",
        lambda r: r["pit_s"] * 1_000_000 / r["pit_rows"] <= 30,
    ),
    ("pit_same_rows_s", "training set on Feast's rows (s)", "pit_feast_s", "", None),
    (
        "backfill_s",
        "backfill (s)",
        None,
        "10M changes <= 300 s (scaled linearly)",
        lambda r: r["backfill_s"] * 10_000_000 / r["backfill_changes"] <= 300,
    ),
    (
        "backfill_vs_copy",
        "backfill / COPY of its rows",
        "backfill_copy_s",
        "<= 1.5",
        lambda r: r["backfill_vs_copy"] <= 1.5,
    ),
    ("oracle_online_match", "oracle: online values equal", None, "1.0", lambda r: r["oracle_online_match"] == 1),
    ("oracle_offline_match", "oracle: offline values equal", None, "1.0", lambda r: r["oracle_offline_match"] == 1),
    (
        "faults_survived",
        "fault scenarios survived (0 lost, 0 doubled, oracle 1.0)",
        "faults_tried",
        "all",
        lambda r: r["faults_survived"] == r["faults_tried"],
    ),
    (
        "intrusions_refused",
        "intrusions refused (bench/results/security.json)",
        "intrusions_tried",
        "all",
        lambda r: r["intrusions_refused"] == r["intrusions_tried"],
    ),
    (
        "infer_1024_p99_ms",
        "fetch + score, 1,024 entities, p99 (ms)",
        None,
        "<= 10 ms on a GPU",
        lambda r: r["infer_device"] == "cuda" and r["infer_1024_p99_ms"] <= 10,
    ),
    (
        "validate_match",
        "online values equal to their offline rows (`cdcf validate`, a sample per view)",
        None,
        "1.0",
        lambda r: r["validate_match"] == 1,
    ),
    ("fraud_auc", "fraud_detection_v1 (XGBoost): held-out AUC", None, "", None),
    (
        "recommend_hit_rate_at_10",
        "recommendation_v1 (network): held-out hit rate at 10",
        "recommend_popularity_hit_rate_at_10",
        "> popularity",
        lambda r: r["recommend_hit_rate_at_10"] > r["recommend_popularity_hit_rate_at_10"],
    ),
    ("segmentation_silhouette", "customer_segmentation_v1 (K-means): silhouette", None, "", None),
    ("batch_score_users_per_s", "batch scoring of every user's segment (users/s)", None, "", None),
    ("infer_fraud_1_p99_ms", "fraud: fetch + score of one transaction, p99 (ms)", None, "", None),
    ("infer_recommend_p99_ms", "recommendation: one user, 1,000 candidates, p99 (ms)", None, "", None),
]


def fmt(value) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        text = f"{value:.3f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    return f"{value:,}" if isinstance(value, int) else str(value)


def plots(r: dict, out: Path) -> dict[str, str]:
    made = {}

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made[title] = name

    samples = r["freshness_samples_s"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))], drawstyle="steps-post")
    for target, label in ((1, "p50 target"), (2, "p99 target")):
        ax.axvline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.text(target, 0.03, f" {label}", fontsize=8, color="grey")
    ax.set(
        xlabel="COMMIT -> served by get_online_features (s)",
        ylabel="fraction of probes",
        title=f"Freshness at {fmt(r['workload']['freshness_rate'])} changes/s ({len(samples)} probes)",
    )
    save(fig, "freshness_cdf.png", "Freshness CDF")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for step in r["capacity_steps"]:
        points = sorted(step["probes"] + step["unserved"])
        left.plot(
            [t for t, _ in points],
            [s for _, s in points],
            marker=".",
            linewidth=0.8,
            label=f"{fmt(step['target_changes_per_s'])}/s{'' if step['held'] else ' (not held)'}",
        )
    left.axhline(r["capacity_bound_s"], color="grey", linestyle="--", linewidth=0.8)
    left.set(
        xlabel="seconds into the step (probe committed)",
        ylabel="COMMIT -> served (s)",
        yscale="log",
        title="Probe lag during each step",
    )
    left.legend(fontsize=7)
    steps = r["capacity_steps"]
    right.plot([s["target_changes_per_s"] for s in steps], [s["achieved_changes_per_s"] for s in steps], marker="o")
    for s in steps:
        right.annotate(
            "held" if s["held"] else "not held",
            (s["target_changes_per_s"], s["achieved_changes_per_s"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, -10),
        )
    right.set(xlabel="target rate (changes/s)", ylabel="achieved rate (changes/s)", title="Capacity sweep")
    save(fig, "capacity_sweep.png", "Capacity sweep")

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    paths = [("ours", "FeatureClient (ours)"), ("raw", "raw Redis pipeline"), ("feast", "Feast SDK")]
    for k, (path, label) in enumerate(paths):
        xs = [n + (k - 1) * 0.27 for n in range(2)]
        ax.bar(xs, [r["online_reads"][size][path]["p50_ms"] for size in ("1", "100")], width=0.27, label=label)
    ax.set_xticks([0, 1], ["1 entity", "100 entities"])
    ax.set(ylabel="p50 latency (ms, log)", yscale="log", title="Online reads of fraud_detection_v1")
    ax.legend(fontsize=8)
    save(fig, "read_latency.png", "Online read latency")

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bars = [
        (f"Feast get_historical_features\n{fmt(r['pit_feast_rows'])} rows", r["pit_feast_s"]),
        (f"ours, same {fmt(r['pit_feast_rows'])} rows", r["pit_same_rows_s"]),
        (f"ours, {fmt(r['pit_rows'])} rows", r["pit_s"]),
    ]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["tab:orange", "tab:blue", "tab:blue"])
    for n, (_, s) in enumerate(bars):
        ax.text(n, s, f"{s:.2f} s", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="seconds", title="Point-in-time training set")
    ax.tick_params(axis="x", labelsize=8)
    save(fig, "training_set.png", "Training-set time")
    return made


def render(r: dict, out: Path, markdown: Path) -> None:
    """Write the plots into ``out`` and the report to ``markdown`` (plots linked relative to it)."""
    images = plots(r, out)
    rel = Path(os.path.relpath(out, markdown.parent))
    m, w = r["machine"], r["workload"]
    reruns = {part: run for run in r.get("reruns", []) for part in run["parts"]}  # each part's latest
    history = r["offline_workload"]  # the offline part's own sizes (a rerun may differ from the full run's)
    lines = [
        "# Benchmarks",
        "",
        f"Rendered by `python -m bench.run` ({w['size']} run, seed {w['seed']}) from "
        f"[`{rel / 'latest.json'}`]({rel / 'latest.json'}); rerun with `make bench`. Every figure below was measured "
        "in that one run, each beside its baseline, on the machine described here"
        + (
            "; these parts were run again later with `python -m bench.run --only`, and their figures replace that "
            "run's: "
            + ", ".join(
                f"{part} ({run['at']}, seed {run['seed']}{', smoke sizes' if run.get('size') == 'smoke' else ''})"
                for part, run in reruns.items()
            )
            if reruns
            else ""
        )
        + ".",
        "",
        f"**Machine:** {m['description']}. Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "jars")
        + f"; jars: {', '.join(m['versions']['jars'])}. The whole stack (Postgres, Kafka, Connect + Debezium, Spark, "
        "Redis) and the load generator share these cores.",
        "",
        *machine_state.section(m.get("state")),
        "## Summary",
        "",
        "| measure | value | baseline (same run) | target | met? |",
        "|---|---|---|---|---|",
    ]
    for key, what, baseline, target, met in ROWS:
        verdict = "" if met is None else ("yes" if met(r) else "**no**")
        base = f"{fmt(r[baseline])} (`{baseline}`)" if baseline else ""
        lines.append(f"| {what} (`{key}`) | {fmt(r[key])} | {base} | {target} | {verdict} |")
    lines += [
        "",
        f"Sizes: training set {fmt(r['pit_rows'])} rows, Feast baseline {fmt(r['pit_feast_rows'])} rows; backfill "
        f"{fmt(r['backfill_changes'])} changes of {history['users']:,} users over {history['days']} days -> "
        f"{fmt(r['backfill_rows_written'])} offline rows; inference on `{r['infer_device']}` "
        f"(1 / 100 / 1,024 entities p99: {r['infer_1_p99_ms']} / {r['infer_100_p99_ms']} / {r['infer_1024_p99_ms']} "
        "ms).",
        "",
        "## Freshness",
        "",
        f"The workload commits {fmt(w['freshness_rate'])} changes/s (transactions of rate/100 changes) over a "
        f"population of {w['load_users']:,} users and {w['load_products']:,} products of its own for "
        f"{w['freshness_seconds']} s, {w['freshness_runs']} runs. A prober updates a probe transaction every 0.25 s; "
        "an independent poller calls `get_online_features` every 10 ms until it returns the new value. The figures "
        "are the medians over runs of each run's p50 and p99; the plot has every probe.",
        "",
        "| run | workload achieved (changes/s) | probes | served | p50 (s) | p99 (s) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {n + 1} | {fmt(x['achieved_changes_per_s'])} | {x['probes']} | {x['served']} | {x['p50_s']} | "
            f"{x['p99_s']} |"
            for n, x in enumerate(r["freshness_runs"])
        ],
        "",
        f"![freshness]({rel / images['Freshness CDF']})",
        "",
        "## Capacity",
        "",
        f"Each step holds a rate for {w['capacity_hold_s']} s (one transaction of rate/10 changes every 100 ms, so "
        "that one Python connection can generate it); a probe a second measures COMMIT -> served. A step is held "
        f"when the generator reached 95% of its rate and every probe of the second half was served within "
        f"{w['capacity_bound_s']} s; the sweep stops at the first step not held. Capacity is the highest achieved "
        "rate held.",
        "",
        "| target (changes/s) | achieved | second-half max lag (s) | held | generator-limited |",
        "|---|---|---|---|---|",
        *[
            f"| {fmt(s['target_changes_per_s'])} | {fmt(s['achieved_changes_per_s'])} | "
            f"{s['second_half_max_lag_s']} | {'yes' if s['held'] else 'no'} | "
            f"{'yes' if s['generator_limited'] else ''} |"
            for s in r["capacity_steps"]
        ],
        "",
        f"![capacity]({rel / images['Capacity sweep']})",
        "",
        "## The streaming job's own capacity (drain)",
        "",
        *_stream_section(r),
        "",
        "## Online reads and writes",
        "",
        f"Reads of `{r['online_read_service']}` ({r['online_read_entities']} entities with values), the three paths "
        f"interleaved on the same random ids, {r['online_read_repeats']} reads per run, median of "
        f"{r['online_read_runs']} runs:",
        "",
        "| entities | ours p50 / p99 (ms) | raw pipeline p50 / p99 | Feast SDK p50 / p99 |",
        "|---|---|---|---|",
        *[
            f"| {size} | " + " | ".join(f"{v[p]['p50_ms']} / {v[p]['p99_ms']}" for p in ("ours", "raw", "feast")) + " |"
            for size, v in r["online_reads"].items()
        ],
        "",
        f"![reads]({rel / images['Online read latency']})",
        "",
        f"Writes of `{r['write_view']}` rows (one entity's values and as-of time): the streaming job's writer "
        f"{fmt(r['write_rows_per_s'])} rows/s ({fmt(r['write_rows'])} rows per run) against Feast `push(to=ONLINE)` "
        f"{fmt(r['write_feast_push_rows_per_s'])} rows/s ({fmt(r['write_feast_rows'])} rows per run); medians of "
        f"{r['write_runs']} runs.",
        "",
        "## Training sets and backfill",
        "",
        f"A synthetic history of {fmt(r['backfill_changes'])} changes in the archive's format (scratch database), "
        f"backfilled by Spark in {r['backfill_s']} s ({r['backfill_rejects']} rejects). Point-in-time sets of "
        "`fraud_detection_v1` for random users at random times:",
        "",
        f"![training]({rel / images['Training-set time']})",
        "",
        "## Oracle",
        "",
    ]
    o = r["oracle_workload"]
    lines += [
        f"A randomized workload ({sum(o['changes'].values()):,} changes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(o["changes"].items()))
        + f") on a fresh entity range, then {o['duplicates_redelivered']:,} of its change events produced to Kafka "
        "again (Debezium's at-least-once redelivery). A brute-force SQL query over the change history "
        "(`bench/exactness.py`, no pipeline code) recomputes each value at the as-of time it was served with, "
        "compared to the bit and by type.",
        "",
        f"- online: {r['oracle_online_compared']:,} values (every feature of every entity of the range), match "
        f"**{r['oracle_online_match']}**",
        f"- offline: {r['oracle_offline_compared']:,} values ({r['oracle_offline_streamed_compared']:,} from rows "
        f"the streaming job wrote, {r['oracle_offline_backfilled_compared']:,} from backfilled rows), match "
        f"**{r['oracle_offline_match']}**",
        "",
    ]
    if r["oracle_mismatches"]:
        lines += ["| where | view | entity | as of | feature | served | oracle |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {x['where']} | {x['view']} | {x['entity']} | {x['as_of']} | {x['feature']} | {x['served']!r} | "
            f"{x['oracle']!r} |"
            for x in r["oracle_mismatches"]
        ]
    else:
        lines.append("No mismatches.")
    gpu = r.get("gpu_inference")
    lines += [
        "",
        "## Inference",
        "",
        f"Fetch + score on this machine ({r['infer_device']}), its own Redis holding "
        f"{r['inference']['entities_in_redis']:,} entities:",
        "",
        *_inference_table(r["inference"][r["infer_device"]]),
    ]
    if gpu:
        lines += [
            "",
            f"Recorded separately on a GPU host ({gpu['gpu']}; {gpu['machine']}; torch {gpu['torch']}) by "
            "`scripts/gpu-bench.sh`, from `bench/results/inference_gpu.json`:",
            "",
            *_inference_table(gpu["cuda"]),
        ]
    lines += _models_section(r, rel if (out / "segments.png").exists() else None)
    lines += _faults_section(r)
    lines += ["", "## Phases", "", ", ".join(f"{k} {v} s" for k, v in r["phase_s"].items()) + "."]
    markdown.write_text("\n".join(lines) + "\n")


def _models_section(r: dict, plot: Path | None) -> list[str]:
    if "models" not in r:
        return []
    m, cards = r["models"], r["models"]["cards"]
    fraud, rec, seg = (cards[n] for n in ("fraud_detection_v1", "recommendation_v1", "customer_segmentation_v1"))
    w = m["workload"]
    lines = [
        "",
        "## Models",
        "",
        f"`bench/models.py`: a workload of {w['users']:,} users and {w['products']:,} products of its own at "
        f"{fmt(w['rate'])} changes/s for {fmt(w['seconds'])} s (account takeovers and their chargebacks, purchases "
        f"by taste), then each model trained on point-in-time sets of the stack's history, on `{m['device']}`.",
        "",
        f"- fraud_detection_v1: {fmt(fraud['rows'])} transactions ({fraud['metrics']['fraud_share']:.2%} charged "
        f"back within 60 days); held-out AUC {fmt(r['fraud_auc'])}, precision at 1% false positives "
        f"{fmt(r['fraud_precision_at_1pct_fpr'])}; one transaction fetched and scored in "
        f"{r['infer_fraud_1_p50_ms']} ms p50, {r['infer_fraud_1_p99_ms']} ms p99.",
        f"- recommendation_v1: {fmt(rec['rows'])} (user, product, time) rows over a catalog of "
        f"{fmt(rec['metrics']['catalog'])} products; hit rate at 10 on {fmt(rec['metrics']['held_out'])} held-out "
        f"purchases {fmt(r['recommend_hit_rate_at_10'])} against {fmt(r['recommend_popularity_hit_rate_at_10'])} "
        f"for popularity; one user against {fmt(m['recommend_candidates'])} candidates in "
        f"{r['infer_recommend_p50_ms']} ms p50, {r['infer_recommend_p99_ms']} ms p99.",
        f"- customer_segmentation_v1: {seg['metrics']['k']} segments of {fmt(seg['rows'])} users, silhouette "
        f"{fmt(r['segmentation_silhouette'])}; batch scoring wrote {fmt(m['batch_score']['users'])} users' "
        f"segments (sizes {m['batch_score']['segment_sizes']}) at {fmt(r['batch_score_users_per_s'])} users/s.",
    ]
    if plot is not None:
        lines += ["", f"![segments]({plot / 'segments.png'})"]
    return lines


def _faults_section(r: dict) -> list[str]:
    if "faults" not in r:
        return []
    lines = [
        "",
        "## Fault matrix",
        "",
        f"`bench/faults.py`: each fault injected into a side stack (its streaming job on a Spark standalone "
        f"cluster of two one-core workers) under a load of {fmt(r['workload']['faults_rate'])} changes/s on an "
        "entity range of its own; nothing is recovered by hand except by an operator's command where one is "
        "needed (`cdcf resnapshot`, resuming a paused connector). Then the range is checked against the oracle. "
        f"**{r['faults_survived']} of {r['faults_tried']}** scenarios survived with 0 lost, 0 doubled and the "
        f"oracle at 1.0; {fmt(r['bad_inputs_tried'])} hostile inputs were tried.",
        "",
        "| scenario | downtime (s) | exact after the load (s) | changes | lost | doubled | oracle online | "
        "oracle offline | survived |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    failed = [f["scenario"] for f in r["faults"] if not f["survived"]]
    if failed:
        lines[3] += (
            f" Not survived: {', '.join(failed)}; their mismatches are in `bench/results/faults.json`, "
            'and streaming/DESIGN.md ("What is still open") says why.'
        )
    for f in r["faults"]:
        if "error" in f:
            lines.append(f"| {f['scenario']} | | | | | | | | **no**: {f['error'][:120]} |")
            continue
        lines.append(
            f"| {f['scenario']} | {f['downtime_s']} | {f['back_to_exact_s']} | {fmt(f['changes_committed'])} "
            f"| {f['lost']} | {f['doubled']} | {fmt(f['oracle_online_match'])} | "
            f"{fmt(f['oracle_offline_match'])} | {'yes' if f['survived'] else '**no**'} |"
        )
    return lines


def _stream_section(r: dict) -> list[str]:
    w = r["stream_workload"]
    runs = r["stream_drain_runs"]
    return [
        f"{fmt(w['changes'])} Debezium change events over {w['users']:,} users and {w['products']:,} products "
        f"(transactions with amount and owner updates and deletes, sessions, reviews, profile upserts) produced to "
        f"change topics of their own ({w['topic_partitions']} partitions each) in {w['prefill_s']} s; the job's "
        "pipeline then drains them from a fresh checkpoint (availableNow), with the source database and Debezium "
        "idle, writing Redis and a scratch offline database. CPU is that of the job's processes (driver JVM and "
        "Python workers).",
        "",
        "| run (cores) | changes | seconds | changes/s | CPU s | us CPU / change | micro-batches | emits "
        "| feature rows |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {run} | {fmt(v['changes'])} | {fmt(v['seconds'])} | {fmt(v['changes_per_s'])} | "
            f"{fmt(v['cpu_s'])} | {fmt(1e6 * v['cpu_s'] / max(v['changes'], 1))} | {v['batches']} | "
            f"{fmt(v['emits'])} | "
            f"{fmt(v['feature_rows'])} |"
            for run, v in runs.items()
        ],
    ]


def _inference_table(sizes: dict) -> list[str]:
    return [
        "| entities | fetch + score p50 / p99 (ms) | fetch alone p50 | raw Redis pipeline p50 |",
        "|---|---|---|---|",
        *[
            f"| {n} | {v['fetch_and_score']['p50_ms']} / {v['fetch_and_score']['p99_ms']} | {v['fetch']['p50_ms']} | "
            f"{v['raw_redis_pipeline']['p50_ms']} |"
            for n, v in sizes.items()
        ],
    ]
