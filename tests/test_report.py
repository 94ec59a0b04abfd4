"""report.py and analysis/report.py: reports of real sweeps logged to temporary MLflow databases."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial
from PIL import Image

from analysis.power import seeds_needed
from analysis.report import why_no_history, why_no_importances
from experiments.tracking import open_parent_run
from test_analysis import (AHEAD, BEHIND, CYCLICAL, DEVICE, DIVERGING, MONOTONIC, SEEDED_BEHIND, SEEDED_BEST,
                           SEEDED_LEVEL, log_known_sweeps, log_trial, logged_sweeps)
from test_run_folder import read_only

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["1_psnr_per_frame", "1_ssim_per_frame", "2_loss_curves", "3_teacher_forcing", "4_kl_beta", "5_val_psnr"]
BEFORE_SSIM = [figure for figure in FIGURES if figure != "1_ssim_per_frame"]  # the figures of runs logged before it
DOCUMENTS = ["summary.csv", "summary.md", "comparisons.csv", "report.md", "index.html"]


def load_script():
    module_spec = importlib.util.spec_from_file_location("report_script", ROOT / "report.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def swept(tmp_path_factory, small_dataset) -> Path:
    return logged_sweeps(tmp_path_factory, small_dataset)


@pytest.fixture(scope="session")
def known_uri(tmp_path_factory) -> str:
    return log_known_sweeps(tmp_path_factory.mktemp("known"))


@pytest.fixture(scope="module")
def script():
    return load_script()


def test_a_grid_sweep_s_report_has_every_figure_the_table_and_both_documents(swept, script, tmp_path, capsys):
    out = tmp_path / "report"
    assert script.main(["--sweep", "ablation", "--tracking-uri", f"sqlite:///{swept / 'mlflow.db'}",
                        "--out", str(out), "--format", "png,pdf"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / "report.md")
    assert printed[-2].startswith(f"ablation: 17 files in {out} (")
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")]
                                                           + DOCUMENTS)
    for figure in FIGURES:
        with Image.open(out / f"{figure}.png") as image:
            assert image.width >= 1000 and image.height >= 500  # 9 inches (or wider) at 150 dpi

    table = pd.read_csv(out / "summary.csv")
    assert table["configuration"].tolist()[2:] == [DIVERGING, "copy first frame", "copy previous frame"]
    assert sorted(table["configuration"].tolist()[:2]) == sorted([CYCLICAL, MONOTONIC])
    assert table[["seeds", "failed", "pruned"]][:3].values.tolist() == [[2, 0, 0], [2, 0, 0], [0, 2, 0]]
    assert table[["seeds", "failed", "pruned"]][3:].isna().all(axis=None)  # blank in the baselines' rows
    assert table["final_val_ssim_mean"][:2].between(0, 1).all() and table["final_val_ssim_mean"][2:].isna().all()
    assert "| final val SSIM |" in (out / "summary.md").read_text()

    report = (out / "report.md").read_text()
    for figure in FIGURES:
        assert f"]({figure}.png)" in report and f"[{figure}.pdf]({figure}.pdf)" in report
    assert report.count("| FAILED | TrainingDiverged: training loss became nan in epoch 1") == 2
    assert f"| 3 | {DIVERGING} | 0 | 2 | 0 | - |" in report
    assert "| paired t | 2 |" in report and "seeds would tell them apart" in report  # two shared seeds
    assert "```yaml\nname: ablation\n" in report
    page = (out / "index.html").read_text()
    assert [f'<img src="{figure}.png"' in page for figure in FIGURES] == [True] * len(FIGURES)
    # summary, comparison with the best, trials that did not finish, and the trials from uncommitted code when
    # the checkout the test ran from had changes
    assert page.count("<table>") == 3 + ("<h2>Runs from uncommitted code</h2>" in page)
    assert "None (β = 1), lr 1e+30" in page


def test_the_report_sets_every_configuration_against_the_copy_baselines(known_uri, script, tmp_path, capsys):
    out = tmp_path / "report"
    assert script.main(["--sweep", "known", "--tracking-uri", known_uri, "--out", str(out)]) == 0
    assert "note:" not in capsys.readouterr().out
    table = pd.read_csv(out / "summary.csv")
    assert table["configuration"].tolist() == [AHEAD, BEHIND, "copy first frame", "copy previous frame"]
    # final val PSNR 22.5 (mean of 22 and 23) and 19.5, against copying the first frame: 20
    assert table["gain_over_copy_first"][:2].tolist() == [2.5, -0.5] and table["gain_over_copy_first"][2:].isna().all()
    assert table["final_val_psnr_mean"][2] == 20.0 and table["final_val_psnr_1step_mean"][3] == 29.0
    assert (out / "summary.csv").read_text().splitlines()[3].startswith("copy first frame,,,,20,")
    assert "| gain over copy-first (dB) | one-step val PSNR (dB) |" in (out / "summary.md").read_text()

    report = (out / "report.md").read_text()
    assert ("Baselines on the same validation video: copying the first frame forward scores 20.00 dB (what a rollout "
            "must beat) and copying the true previous frame 29.00 dB (what a one-step prediction must beat)") in report
    assert f"{BEHIND} does not beat copying the first frame (-0.50 dB)." in report
    assert f"{AHEAD} does not beat" not in report
    assert "Dashed grey: copying the first frame forward" in report  # figure 1's caption
    assert "Dashed grey: copying the first frame (left) and the previous frame (right)" in report  # figure 5's
    page = (out / "index.html").read_text()
    assert f"{BEHIND} does not beat copying the first frame (-0.50 dB)." in page
    assert "<td>copy previous frame</td>" in page


def test_runs_logged_before_the_baselines_still_make_a_report(known_uri, script, tmp_path, capsys):
    out = tmp_path / "report"
    assert script.main(["--sweep", "old", "--tracking-uri", known_uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("note: no copy baselines in the table or figures 1 and 5: the finished trials' runs were logged without "
            "them") in printed
    assert "note: no SSIM per frame figure: the runs were logged before trials logged it" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{f}.png" for f in BEFORE_SSIM] + DOCUMENTS)
    table = pd.read_csv(out / "summary.csv")
    assert table["configuration"].tolist() == [AHEAD, BEHIND] and table["gain_over_copy_first"].isna().all()
    report = (out / "report.md").read_text()
    assert "copy first frame" not in report and "does not beat" not in report and "Dashed grey" not in report
    assert "gain over copy-first" not in (out / "summary.md").read_text()
    assert "SSIM" not in (out / "summary.md").read_text() and table["final_val_ssim_mean"].isna().all()  # blank
    assert "- **device time**: n/a: the runs were logged before trials recorded their device time" in report
    assert "- **code**: not recorded" in report and "Runs from uncommitted code" not in report
    assert pd.read_csv(out / "summary.csv")["device_hours"].isna().all()
    assert [line.rsplit("|", 2)[-2].strip() for line in (out / "summary.md").read_text().splitlines()[2:]] == [
        "n/a", "n/a"]


def test_the_report_compares_configurations_seed_by_seed(known_uri, script, tmp_path, capsys):
    out = tmp_path / "report"
    assert script.main(["--sweep", "seeded", "--tracking-uri", known_uri, "--out", str(out)]) == 0
    assert "note:" not in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert ("| configuration | test | seeds | per-seed difference (dB) | difference from best (dB) | 95% t interval | "
            "95% bootstrap interval | p | p (Holm) | p (Wilcoxon) | Hedges' g | seeds needed | verdict |") in report
    behind = seeds_needed(0.6 / np.sqrt(0.02), paired=True, alpha=0.05 / 3)  # d_z of the six differences
    assert (f"| {SEEDED_BEHIND} | paired t | 6 | -0.50, -0.70, -0.60, -0.40, -0.80, -0.60 | -0.60 | [-0.75, -0.45] | "
            f"[-0.70, -0.50] | < 0.001 | < 0.001 | 0.031 | -0.30 | {behind:.0f} | real difference |") in report
    assert f"| {SEEDED_LEVEL} | paired t | 6 | +0.05, -0.10, +0.08, -0.02, +0.03, -0.06 | -0.00 |" in report
    assert "Holm-corrected over all 3 pairs of configurations" in report
    assert f"Real differences at 0.05 after Holm's correction: {SEEDED_BEHIND} (-0.60 dB, Holm p < 0.001)." in report
    assert f"Not told apart from the best (the difference may be seed noise): {SEEDED_LEVEL} (-0.00 dB, " in report
    assert f"{SEEDED_BEHIND} vs {SEEDED_BEST}: -0.60 dB, about {behind:.0f} seeds would tell them apart." in report
    assert f"{SEEDED_LEVEL} vs {SEEDED_BEST}: -0.00 dB; not even 1000 seeds would tell them apart." in report

    compared = pd.read_csv(out / "comparisons.csv").set_index("configuration")
    assert compared.loc[SEEDED_BEHIND, "p_holm"] == pytest.approx(3 * compared.loc[SEEDED_BEHIND, "p_value"], rel=1e-4)
    assert compared.loc[SEEDED_BEHIND, "differences"] == "-0.5 -0.7 -0.6 -0.4 -0.8 -0.6"
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["device_hours"][:3] > 0).all() and summary["device_hours"][3:].isna().all()
    assert "| wall time / trial | device-hours |" in (out / "summary.md").read_text()
    assert re.search(rf"- \*\*device time\*\*: (< 0\.001|\d+\.\d{{3}}) device-hours over 18 ended trials "
                     rf"\({DEVICE} × 18\)\n", report)
    assert "- **code**: git 0123456; 2 of 18 trials ran from uncommitted changes (listed below)" in report
    uncommitted = report[report.index("## Runs from uncommitted code"):report.index("## Sweep spec")]
    assert f"| 0 | {SEEDED_BEST} | 1 | COMPLETE | 0123456 |" in uncommitted
    assert f"| 1 | {SEEDED_BEHIND} | 1 | COMPLETE | 0123456 |" in uncommitted and uncommitted.count("| COMPLETE |") == 2
    page = (out / "index.html").read_text()
    assert "<h2>Runs from uncommitted code</h2>" in page and "<th>p (Holm)</th>" in page


def test_a_read_only_out_is_one_line_and_writes_nothing(known_uri, script, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert script.main(["--sweep", "seeded", "--tracking-uri", known_uri, "--out", str(locked / "report")]) == 2
        assert script.main(["--sweep", "seeded", "--tracking-uri", known_uri, "--out", str(locked)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and not list(locked.iterdir())
    assert err[0].startswith(f"error: --out: cannot write the report into {locked / 'report'} (")
    assert err[0].endswith("); give a folder you can write to")
    assert err[1].startswith(f"error: --out: cannot write the report into {locked} (")


def log_lost_sweep(folder: Path, logged: int) -> str:
    """A sweep whose Optuna study finished 3 trials, of which only the first `logged` have runs in MLflow (as after
    mlflow.db was deleted between launches); returns the database's URI."""
    journal = folder / "optuna.journal"
    study = optuna.create_study(study_name="lost", direction="maximize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    for value in (20.0, 21.0, 22.0):
        study.add_trial(create_trial(params={}, distributions={}, value=value))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    parent = open_parent_run(uri, "lost", "lost-id", tags={"sweep.storage": str(journal), "sweep.spec": "lost.yaml"})
    for number_ in range(logged):
        log_trial(MlflowClient(uri), parent, number_, 1e-3, number_ + 1, [20.0 + number_], [28.0], None)
    return uri


def test_finished_trials_missing_from_mlflow_are_named(script, tmp_path, capsys):
    uri = log_lost_sweep(tmp_path, logged=1)
    assert script.main(["--sweep", "lost", "--tracking-uri", uri, "--out", str(tmp_path / "report")]) == 0
    note = (f"note: the Optuna study has 2 finished trial(s) whose runs are not in MLflow at {uri} (trials 1, 2), so "
            "they are in no table or figure: was the database deleted or replaced since they ran?")
    assert note in capsys.readouterr().out.splitlines()


def test_a_sweep_whose_runs_are_all_missing_from_mlflow_is_one_line(script, tmp_path, capsys):
    uri = log_lost_sweep(tmp_path, logged=0)
    capsys.readouterr()  # MLflow's own lines from creating the database
    assert script.main(["--sweep", "lost", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == (
        f"error: sweep 'lost' at {uri} has no finished trial (no trial started), but its Optuna study has 3: their "
        "runs are not in this MLflow database (was it deleted or replaced since they ran?); give --tracking-uri the "
        "database they logged to\n")


def test_a_sampled_sweep_s_report_adds_optuna_s_figures(swept, script, tmp_path, capsys):
    out = tmp_path / "report"
    assert script.main(["--tracking-uri", f"sqlite:///{swept / 'sampled.db'}", "--out", str(out)]) == 0  # the latest
    assert {"7_param_importances.png", "7_optimization_history.png"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "(7_param_importances.png)" in report and "(7_optimization_history.png)" in report
    assert "note:" not in capsys.readouterr().out


def test_without_its_study_a_sampled_sweep_s_report_says_what_it_left_out(swept, script, tmp_path, capsys):
    journal = swept / "runs/sampled/optuna.journal"
    assert script.main(["--tracking-uri", f"sqlite:///{swept / 'sampled.db'}", "--out", str(tmp_path),
                        "--format", "png,svg"]) == 0
    assert {p.name for p in tmp_path.glob("7_*")} == {"7_param_importances.png", "7_param_importances.svg",
                                                       "7_optimization_history.png", "7_optimization_history.svg"}
    journal.rename(swept / "away.journal")
    try:
        assert script.main(["--tracking-uri", f"sqlite:///{swept / 'sampled.db'}", "--out", str(tmp_path)]) == 0
    finally:
        (swept / "away.journal").rename(journal)
    assert f"note: no Optuna figures: its Optuna journal {journal} is gone" in capsys.readouterr().out
    assert not list(tmp_path.glob("7_*")) and not list(tmp_path.glob("*.svg"))  # the earlier report's are gone
    assert f"No Optuna figures: its Optuna journal {journal} is gone." in (tmp_path / "report.md").read_text()


def test_importances_need_two_complete_trials_and_a_varying_parameter():
    study = optuna.create_study(direction="maximize")
    assert why_no_history(study) == "the study has no COMPLETE trial"
    kinds = CategoricalDistribution(["Cyclical", "None"])
    study.add_trial(create_trial(params={"kl_anneal_type": "None"}, distributions={"kl_anneal_type": kinds}, value=1))
    assert why_no_importances(study) == "importances need 2 or more COMPLETE trials, the study has 1"
    study.add_trial(create_trial(params={"kl_anneal_type": "None"}, distributions={"kl_anneal_type": kinds}, value=2))
    assert why_no_importances(study) == "no sampled hyperparameter took more than one value among the COMPLETE trials"
    lr = FloatDistribution(1e-4, 1e-2, log=True)
    study.add_trial(create_trial(params={"kl_anneal_type": "None", "lr": 1e-3},
                                 distributions={"kl_anneal_type": kinds, "lr": lr}, value=3))
    assert why_no_importances(study) == "" and why_no_history(study) == ""


@pytest.mark.parametrize("arguments, message", [
    (["--sweep", "ablaton"], "error: --sweep: no sweep 'ablaton' in MLflow at {uri}; "
                             "the sweeps there are: ablation, broken"),
    (["--experiment", "42"], "error: --experiment: no experiment '42' in MLflow at {uri}; "
                             "the experiments there are: "),
    (["--sweep", "broken"], "error: sweep 'broken' at {uri} has no finished trial yet (1 failed); "
                            "finish it with python run_sweep.py sweeps/broken.yaml"),
    (["--format", "png,gif"], "error: --format: gif is not a figure format; "
                              "give a comma-separated list of png, pdf, svg"),
])
def test_errors_are_one_line_and_exit_code_2(swept, script, capsys, arguments, message):
    uri = f"sqlite:///{swept / 'mlflow.db'}"
    assert script.main([*arguments, "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message.format(uri=uri)) and captured.err.count("\n") == 1
    assert captured.out == ""


def test_a_tracking_uri_that_cannot_be_opened_is_one_line(script, tmp_path, capsys):
    assert script.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert capsys.readouterr().err == (f"error: --tracking-uri: no MLflow database at {tmp_path / 'none.db'}; run a "
                                       "sweep first (python run_sweep.py sweeps/quick.yaml) or pass the URI it logged "
                                       "to\n")
    assert script.main(["--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: cannot open 'http://127.0.0.1:9' (") and err.count("\n") == 1


def test_out_must_be_a_folder(swept, script, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert script.main(["--sweep", "ablation", "--tracking-uri", f"sqlite:///{swept / 'mlflow.db'}",
                        "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: --out: {tmp_path / 'file'} is a file; give a folder for the report\n"


def test_sweep_and_experiment_exclude_each_other(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.main(["--sweep", "a", "--experiment", "b"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
