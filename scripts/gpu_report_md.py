"""The GPU checks' report as Markdown: one summary table, then the figures of each kind of check."""

from __future__ import annotations


def _e(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def summary(name: str, res: dict) -> str:
    """One line of the figures that matter for check ``name``."""
    if res.get("status") == "skip":
        return res.get("reason", "")
    if "error" in res:
        return res["error"]
    if name == "torch-features":
        return ", ".join(f"{k} {_e(v['features_max_rel_err'])}" for k, v in res["backbones"].items()) + \
            f" (max rel err, tolerance {_e(res['tolerance'])})"
    if name == "fit":
        return ", ".join(f"{k}: bank {v['bank'][0]}x{v['bank'][1]}, fit {v['fit_seconds']} s, export {v['export_seconds']} s"
                         for k, v in res.items() if isinstance(v, dict))
    if name == "coreset":
        sel = "same selection" if res["same_selection"] else \
            f"selections split at {res['first_difference_at']}, radius diff {res['radius_rel_diff']:.1%}"
        return (f"{sel}; {res['selected']} of {res['patches'][0]}: CPU {res['cpu_seconds']} s, GPU {res['gpu_seconds']} s "
                f"({res['speedup']}x); 10% on GPU {res['gpu_seconds_10pct']} s")
    if name == "ort-provider":
        return (f"onnxruntime {res.get('onnxruntime')} ({res.get('package')}, CUDA {res.get('built_for_cuda')}) "
                f"ran {res.get('provider')}, TF32 {'off' if res.get('tf32_off') else 'ON'}")
    if name.startswith("parity"):
        return "; ".join(f"{t['name']}: image {_e(t['errors']['image'])}" for t in res["targets"])
    if name.startswith("throughput"):
        b, g = res.get("best_end_to_end"), res.get("best_graph_alone")
        if not b:
            return res.get("stopped", "no run finished")
        text = (f"end to end {b['images_per_s']:.0f} img/s ({b['precision']}, batch {b['batch']}), graph alone "
                f"{g['images_per_s']:.0f} img/s; bound: {b['bound']}")
        return text + ("" if res.get("complete") else f" [stopped: {res.get('stopped')}]")
    if name == "gpu-search":
        return (f"{res['path']}; image {_e(res['image_score_max_rel_err'])}, same nearest patch "
                f"{res['same_nearest_fraction']:.4f}")
    return ", ".join(f"{k} {v}" for k, v in res.items() if isinstance(v, (int, float, str)) and k not in ("status", "phase", "proves"))


def throughput_table(name: str, res: dict) -> list[str]:
    lines = [f"### {name}: bank {res.get('bank')}, {res.get('engine')}, {res.get('input')}, {res.get('cpu_count')} CPUs", "",
             "| precision | batch | end to end img/s | latency ms (p90) | preprocess | graph + copies | rescoring | maps "
             "| other | graph alone img/s (features only) | in-graph search | H2D | D2H |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.get("runs", []):
        e, g, c = r["end_to_end"], r["graph_alone"], r["copies_ms_per_image"]
        m = e["ms_per_image"]
        lines.append(f"| {r['precision']} | {r['batch']} | {e['images_per_s']:.0f} | {e['latency_ms_median']:.1f} "
                     f"({e['latency_ms_p90']:.1f}) | {m['preprocess']:.3f} | {m['features']:.3f} | {m['search']:.3f} "
                     f"| {m['postprocess']:.3f} | {m['other']:.3f} | {g['scores_images_per_s']:.0f} "
                     f"({g['features_images_per_s']:.0f}) | {g['search_in_graph_ms_per_image']:.3f} "
                     f"| {c['host_to_device_input']:.3f} | {c['device_to_host_outputs']:.3f} |")
    lines += ["", "Stage columns: ms per image (medians). Graph + copies is the runtime's graph stage with its "
              "host-device copies; H2D/D2H time those copies alone."]
    if "preprocess_images_per_s" in res:
        lines.append("Preprocessing alone: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in res["preprocess_images_per_s"].items()) + ".")
    if "short_of_goal" in res:
        lines.append(f"Goal {res['goal_images_per_s']:.0f} img/s end to end not met: {res['short_of_goal']}.")
    elif res.get("goal_met"):
        lines.append(f"Goal {res['goal_images_per_s']:.0f} img/s end to end met.")
    return lines + [""]


def parity_table(name: str, res: dict) -> list[str]:
    lines = [f"### {name} ({res['images']} images, reference {res['reference']['engine']})", "",
             "| target | provider | features | patch | image | image, unweighted | maps | in-graph distance "
             "| image AUROC diff | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in res["targets"]:
        e = t["errors"]
        lines.append(f"| {t['name']} | {t['provider']} | {_e(e['features'])} | {_e(e['patch'])} | {_e(e['image'])} "
                     f"| {_e(e.get('image_unweighted'))} | {_e(e['maps'])} | {_e(e.get('in_graph_distance'))} "
                     f"| {_e(t['auroc'].get('image_diff'))} | {'ok' if t['ok'] else 'FAIL: ' + '; '.join(t['failures'])} |")
    for b in res.get("broken", []):
        lines.append(f"| {b['name']} | - | - | - | - | - | - | - | - | FAIL: {b['reason']} |")
    lines += ["", "Max relative errors against PyTorch on the CPU. \"Unweighted\" is the max patch score before the "
              "paper's eq. 7 reweighting: where it agrees and the image score does not, near-tied bank neighbours "
              "picked another N_b(m*) (export.parity explains)."]
    return lines + [""]


def render(report: dict) -> str:
    env = report.get("environment", {})
    ort = env.get("onnxruntime", {})
    lines = ["# patchcore-rt GPU checks", ""]
    if report.get("rehearsal"):
        lines += ["**Rehearsal on the CPU with tiny data: these figures test the script, not a GPU.**", ""]
    lines += [f"- GPU: {env.get('gpu', 'none')} (sm {env.get('compute_capability', '-')}); nvidia-smi: {env.get('nvidia_smi', '-')}",
              f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}, {env.get('cpu_count')} CPUs",
              f"- onnxruntime: {ort.get('onnxruntime', '-')} {ort.get('package', '')}, provider loaded: {ort.get('provider', '-')}",
              f"- updated {report.get('updated')}; runs: "
              + ", ".join(f"{r['phase']} ({r.get('seconds', '?')} of {r['budget_s']:.0f} s)" for r in report.get("runs", [])),
              "", "| check | status | s | result |", "|---|---|---|---|"]
    checks = report.get("checks", {})
    for name in report.get("order", checks):
        if name in checks:
            res = checks[name]
            text = summary(name, res).replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {res['status']} | {res.get('seconds', '-')} | {text} |")
    lines.append("")
    for name, res in checks.items():
        if res.get("status") == "skip" or "error" in res:
            continue
        if name.startswith("throughput"):
            lines += throughput_table(name, res)
        elif name.startswith("parity"):
            lines += parity_table(name, res)
    return "\n".join(lines) + "\n"
