"""The Table 1 script end to end on a tiny budget."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

from conftest import GTSRB, REPO, experiment_script


def test_table1_script_on_a_tiny_budget(tiny_tfds, tmp_path):
  out = tmp_path / "table1.md"
  command = [
    sys.executable,
    "experiments/table1_distorted_mnist.py",
    "--scale=cpu",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
    f"--archive={tmp_path / 'archive'}",
    "--seeds=2",
    "--distortions=rts",
    "--models=cnn,st_cnn",
    "--no_tc",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=num_steps=2",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    "--set=log_every=1",
    f"--archive={tmp_path / 'archive'}",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  table = out.read_text()
  lines = [row for row in table.splitlines() if row.startswith("|")]
  assert lines[0] == "| model | RTS |"
  assert lines[1] == "|---|---|"
  rows = {row.split("|")[1].strip(): row for row in lines[2:]}
  assert set(rows) == {"CNN", "ST-CNN Aff", "ST-CNN Proj", "ST-CNN TPS"}
  assert "(paper 0.8" in rows["CNN"] and "n=2)" in rows["CNN"]
  assert "scale: **cpu**: 2 adam steps of 8" in table
  archived = sorted((tmp_path / "archive" / "table1").iterdir())
  assert len(archived) == 8  # 4 models x 2 seeds, one manifest each
  assert all((a / "manifest.json").is_file() for a in archived)
  # Rerunning reuses every finished run, even with the workdir lost: the
  # archive is restored into a new one.
  shutil.rmtree(tmp_path / "runs")
  again = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert again.returncode == 0, again.stderr[-3000:]
  rerun = out.read_text()
  assert "(0 runs trained now" in rerun
  assert [r for r in rerun.splitlines() if r.startswith("| ")] == [
    r for r in table.splitlines() if r.startswith("| ")
  ]


def test_table1_script_trains_each_cells_seeds_as_one_population(
  tiny_tfds, tmp_path
):
  out = tmp_path / "table1.md"
  result = subprocess.run(
    [
      sys.executable,
      "experiments/table1_distorted_mnist.py",
      "--scale=cpu",
      f"--workdir={tmp_path / 'runs'}",
      f"--out={out}",
      "--seeds=2",
      "--distortions=rts",
      "--models=cnn",
      "--no_tc",
      "--population",
      f"--archive={tmp_path / 'archive'}",
      f"--set=tfds_dir={tiny_tfds}",
      "--set=num_steps=2",
      "--set=batch_size=8",
      "--set=eval_batch_size=8",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  populations = list((tmp_path / "runs" / "table1" / "populations").iterdir())
  assert len(populations) == 1  # both seeds of the one cell
  records = [
    json.loads(line)
    for line in (tmp_path / "runs" / "table1" / "results.jsonl")
    .read_text()
    .splitlines()
  ]
  assert [r["status"] for r in records] == ["finished"] * 2
  assert {r["population"]["name"] for r in records} == {populations[0].name}
  # Each member's point folder holds its own run files, which the archive
  # keeps like any finished point's.
  with open(populations[0] / "population.json") as f:
    members = json.load(f)["members"]
  for record, member in zip(records, members):
    folder = tmp_path / "runs" / "table1" / record["name"]
    for name in ("config.json", "results.json", "metrics.jsonl"):
      assert (folder / name).is_file(), name
    with open(folder / "config.json") as f:
      assert json.load(f)["seed"] == member["seed"]
    assert record["results"]["test_error"] == member["test_error"]
    assert (
      tmp_path / "archive" / "table1" / record["name"] / "manifest.json"
    ).is_file()
  row = next(r for r in out.read_text().splitlines() if r.startswith("| CNN"))
  assert "n=2)" in row


def test_gtsrb_script_on_a_tiny_budget(tiny_tfds, tmp_path):
  out = tmp_path / "gtsrb.md"
  command = [
    sys.executable,
    "experiments/gtsrb.py",
    "--scale=cpu",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
    "--seeds=1",
    "--models=gtsrb_cnn,resnet_stn",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=num_steps=2",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    "--set=log_every=1",
    f"--archive={tmp_path / 'archive'}",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  table = out.read_text()
  ours = table.split("## Ours")[1].split("## Published")[0]
  lines = [row for row in ours.splitlines() if row.startswith("|")]
  assert lines[0] == (
    "| model | network | input | test accuracy | validation accuracy |"
  )
  rows = {row.split("|")[1].strip(): row.split("|") for row in lines[2:]}
  assert set(rows) == {
    "CNN (Arcos-Garcia layout, no ST)",
    "ResNet-STN (ST on the input)",
  }
  for cells in rows.values():
    assert cells[3].strip() == "32x32"
    assert "n=1)" in cells[4] and "n=1)" in cells[5]
  assert "(paper 98.85," in rows["CNN (Arcos-Garcia layout, no ST)"][4]
  assert "| CNN + 3 ST (Arcos-Garcia et al. 2018) | 48x48 | 99.71% |" in table
  assert "scale: **cpu**: 2 adam steps of 8" in table
  assert "trained on `train_without_validation`" in table
  # The error report of one of these runs recounts the error it recorded.
  (run,) = (tmp_path / "runs").rglob("*model=gtsrb_cnn,*")
  report = subprocess.run(
    [
      sys.executable,
      "experiments/gtsrb_errors.py",
      str(run),
      f"--tfds_dir={tiny_tfds}",
      "--split=validation",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert report.returncode == 0, report.stderr[-3000:]
  recorded = json.loads((run / "results.json").read_text())
  ours = re.search(
    r"error: \*\*([\d.]+)%\*\* \((\d+) of (\d+)\); recorded "
    r"by the run at its end: ([\d.]+)%",
    report.stdout,
  )
  assert ours, report.stdout
  assert (
    float(ours[1])
    == float(ours[4])
    == round(100 * recorded["validation_error"], 2)
  )
  assert "| danger |" in report.stdout and "| >= 75 px |" in report.stdout


def test_long_runs_script_writes_one_row_per_finished_run(tiny_tfds, tmp_path):
  out = tmp_path / "long_runs.md"
  command = [
    sys.executable,
    "experiments/long_runs.py",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
    "--cells=GTSRB CNN + 3 ST",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=num_steps=2",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    "--set=log_every=1",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [r for r in out.read_text().splitlines() if r.startswith("| ")]
  assert rows[0] == "| cell | ours | paper | validation | budget | wall time |"
  cells = {r.split(" | ")[0][2:]: r.split(" | ")[1:] for r in rows[1:]}
  # (the RTS cells run table1's points, as the Table 1 test above does)
  assert set(cells) == {"GTSRB CNN + 3 ST"}
  ours, paper, validation, budget, wall = cells["GTSRB CNN + 3 ST"]
  assert 0 <= float(ours) <= 100 and paper == "99.71 (48x48)"
  assert 0 <= float(validation) <= 100
  assert budget.startswith("2 adam steps of 8")
  assert re.fullmatch(
    r"\d+ min \(last invocation; steps alone \d+ min over all\) \|", wall
  ), wall


def test_table1_p_over_r_ratio_from_the_seed_means():
  script = experiment_script("table1_distorted_mnist")
  errors = {
    ("cnn", "affine", "r"): [0.04, 0.05],
    ("cnn", "affine", "p"): [0.06, 0.08],
    ("fcn", "affine", "r"): [0.09],  # no P run: left out
  }
  lines = script.p_over_r_lines(errors, ["cnn", "fcn"])
  rows = [row for row in lines if row.startswith("| CNN")]
  # (0.06 + 0.08) / 2 / ((0.04 + 0.05) / 2) = 1.5556; paper 1.5 / 1.2
  assert rows == ["| CNN | 1.56 | 1.25 |"]
  assert not any(row.startswith("| FCN") for row in lines)
  assert script.p_over_r_lines(errors, ["fcn"]) == []


def test_a_bad_override_is_one_line_naming_it_without_a_traceback(tmp_path):
  scripts = {
    "table1_distorted_mnist.py": ["--scale=cpu"],
    "gtsrb.py": ["--scale=cpu"],
    "long_runs.py": ["--cells=GTSRB CNN"],
  }
  for script, extra in scripts.items():
    result = subprocess.run(
      [
        sys.executable,
        f"experiments/{script}",
        *extra,
        f"--workdir={tmp_path / script}",
        f"--out={tmp_path / 'out.md'}",
        "--set=num_steps=many",
        "--report_only",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 2, (script, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, (script, result.stderr)
    assert re.fullmatch(
      rf"{script}: error: override 'num_steps': expected int \(like the "
      r"default \d+\), got 'many' \(str\)\.",
      result.stderr.strip(),
    ), result.stderr


def _reports_from_cache_then_archive(
  command, tmp_path, out, rows, caches, glob
):
  """``command --report_only`` reads the cached evaluations (rewrites none)
  and writes the same table ``rows``; the caches are also in
  ``tmp_path/archive`` (``glob``), and once ``tmp_path/runs`` is gone (no
  checkpoints: a later session) the same rows come from the archive."""

  def report():
    result = subprocess.run(
      command + ["--report_only"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [r for r in out.read_text().splitlines() if r.startswith("| ")]

  stamps = [c.stat().st_mtime_ns for c in caches]
  assert report() == rows
  assert [c.stat().st_mtime_ns for c in caches] == stamps
  archived = sorted((tmp_path / "archive").glob(glob))
  assert [c.read_text() for c in archived] == [c.read_text() for c in caches]
  shutil.rmtree(tmp_path / "runs")
  assert report() == rows


def test_beyond_script_trains_evaluates_and_caches(tiny_tfds, tmp_path):
  out = tmp_path / "beyond.md"
  command = [
    sys.executable,
    "experiments/beyond.py",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
    "--seeds=1",
    "--distortions=rts",
    "--models=cnn,st_cnn",
    "--max_examples=8",
    f"--figures={tmp_path / 'figures'}",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=num_steps=2",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    f"--archive={tmp_path / 'archive'}",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [r for r in out.read_text().splitlines() if r.startswith("| ")]
  assert rows[0].startswith("| model | test error % | ECE % | rotation: mean")
  labels = [r.split(" | ")[0][2:] for r in rows[1:]]
  assert labels == ["CNN", "ST-CNN"]
  for row in rows[1:]:
    cells = row.strip("| ").split(" | ")[1:]
    assert len(cells) == 2 + 2 * 3 and all("(n=1)" in c for c in cells), row
  assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
    "beyond_rts_rotation.png",
    "beyond_rts_scale.png",
    "beyond_rts_translation.png",
  ]
  caches = sorted((tmp_path / "runs" / "beyond").glob("*/beyond.json"))
  assert len(caches) == 2
  cached = json.loads(caches[0].read_text())
  assert 0 <= cached["ece"] <= 1
  assert set(cached["families"]) == {"rotation", "scale", "translation"}
  assert cached["families"]["rotation"]["largest"] in (-90.0, 90.0)
  # a rerun reads the cache (evaluates nothing again) and writes the same
  _reports_from_cache_then_archive(
    command, tmp_path, out, rows, caches, "beyond/*/beyond.json"
  )


def test_results_files_keep_their_hand_written_notes(tmp_path):
  """Every table script writes through _tables.write_table, which keeps
  the part of the file from a '(written by hand)' heading on."""
  tables = experiment_script("_tables")
  out = tmp_path / "fast_runs.md"
  assert tables.kept_notes(str(out)) == []
  out.write_text("# table\n\n| a |\n\n## How (written by hand)\n\n- kept\n")
  assert tables.kept_notes(str(out)) == [
    "",
    "## How (written by hand)",
    "",
    "- kept",
  ]
  assert tables.write_table(str(out), ["# table", "", "| b |"], []) == 0
  assert out.read_text() == (
    "# table\n\n| b |\n\n## How (written by hand)\n\n- kept\n"
  )


def test_beyond_figures_and_table_with_both_distortions(tmp_path):
  """beyond.py's report from rows of RTS and P runs (their invariance
  families differ): one figure per distortion and family, one table per
  distortion, each cell the mean ± std over seeds."""
  beyond = experiment_script("beyond")

  def run(error, family_errors):
    curves = {f: [(0.0, error), (1.0, e)] for f, e in family_errors.items()}
    families = {
      f: {"mean": (error + e) / 2, "largest": 1.0, "at_largest": e}
      for f, e in family_errors.items()
    }
    return {
      "test_error": error,
      "ece": 0.01,
      "families": families,
      "curves": curves,
    }

  rts = {"rotation": 0.2, "scale": 0.1, "translation": 0.3}
  rows = {
    ("rts", "CNN"): [run(0.08, rts), run(0.10, rts)],
    ("rts", "ST-CNN"): [run(0.03, rts)],
    ("p", "CNN"): [run(0.07, {"projective": 0.4})],
  }
  paths = beyond.write_figures(rows, ["rts", "p"], str(tmp_path))
  assert sorted(pathlib.Path(p).name for p in paths) == [
    "beyond_p_projective.png",
    "beyond_rts_rotation.png",
    "beyond_rts_scale.png",
    "beyond_rts_translation.png",
  ]
  assert all(pathlib.Path(p).stat().st_size > 0 for p in paths)
  lines = beyond.table_lines(rows, ["rts", "p"])
  assert "## RTS" in lines and "## P" in lines
  cnn = next(line for line in lines if line.startswith("| CNN |"))
  assert "9.00 ± 1.41 (n=2)" in cnn  # the two seeds' 8% and 10%


def test_resnet_stn_script_trains_evaluates_and_reports(tiny_tfds, tmp_path):
  """resnet_stn.py on a tiny budget, two of the placement variants on
  GTSRB: one row each (accuracy, throughput, parameters, invariance), the
  figures, and a cached evaluation that a rerun reads, also from the
  archive once the workdir is gone."""
  out = tmp_path / "resnet_stn.md"
  command = [
    sys.executable,
    "experiments/resnet_stn.py",
    f"--workdir={tmp_path / 'runs'}",
    f"--out={out}",
    "--seeds=1",
    "--datasets=gtsrb",
    "--only=model=preact_resnet",
    "--only=placement=stage1",
    "--max_examples=8",
    f"--figures={tmp_path / 'figures'}",
    f"--set=tfds_dir={tiny_tfds}",
    "--set=num_steps=2",
    "--set=batch_size=8",
    "--set=eval_batch_size=8",
    "--set=log_every=1",
    f"--archive={tmp_path / 'archive'}",
  ]
  result = subprocess.run(
    command, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  table = out.read_text()
  rows = [r for r in table.splitlines() if r.startswith("| ")]
  assert rows[0].startswith(
    "| variant | test accuracy % | validation accuracy % | examples/s | "
    "parameters | rotation: mean error %"
  )
  cells = {
    r.split(" | ")[0][2:]: r.strip("| ").split(" | ")[1:] for r in rows[1:]
  }
  assert sorted(cells) == ["ResNet", "ResNet-STN: stage1"]
  for row in cells.values():
    test, validation, rate, _, *families = row
    assert "(n=1)" in test and "(n=1)" in validation, row
    assert float(rate.replace(",", "")) > 0, row
    assert len(families) == 3 and all("(n=1)" in f for f in families), row
  # the transformer adds parameters
  count = {k: int(v[3].replace(",", "")) for k, v in cells.items()}
  assert count["ResNet-STN: stage1"] > count["ResNet"]
  assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
    "resnet_stn_gtsrb_rotation.png",
    "resnet_stn_gtsrb_scale.png",
    "resnet_stn_gtsrb_translation.png",
  ]
  caches = sorted((tmp_path / "runs").glob("gtsrb/placement/*/resnet_stn.json"))
  assert len(caches) == 2
  _reports_from_cache_then_archive(
    command, tmp_path, out, rows, caches, "gtsrb/placement/*/resnet_stn.json"
  )


def test_resnet_stn_table_gives_accuracy_for_gtsrb_and_error_for_rts():
  """resnet_stn.py's measure and table from synthetic rows: GTSRB cells
  are accuracies, RTS cells errors, each the mean ± std over seeds."""
  study = experiment_script("resnet_stn")
  assert study.measure("gtsrb", {"test_error": 0.05}, "test") == 0.95
  assert study.measure("rts", {"test_error": 0.05}, "test") == 0.05
  assert study.measure("rts", {"test_error": 0.05}, "validation") is None

  def run(test):
    curves = {f: [(0.0, 0.1), (1.0, 0.3)] for f in study.FAMILIES}
    return {
      "test": test,
      "validation": None,
      "parameters": 1000,
      "examples_per_second": 500.0,
      "families": {f: 0.2 for f in study.FAMILIES},
      "curves": curves,
    }

  lost = {"test": 0.94, "validation": 0.95}  # no checkpoint, no evaluation
  rows = {
    ("gtsrb", "ResNet"): [run(0.90), run(0.92)],
    ("gtsrb", "ResNet-STN: stage2"): [lost, {**run(0.96), "validation": 0.97}],
    ("gtsrb", "ResNet-STN: stage1"): [lost],
    ("rts", "ResNet-STN: input"): [run(0.02)],
  }
  lines = study.table_lines(rows, ["gtsrb", "rts"])
  # Accuracy over both seeds, the evaluation's columns over the one
  # evaluated; '-' where none is.
  assert any(
    line.startswith(
      "| ResNet-STN: stage2 | 95.00 ± 1.41 (n=2) | 96.00 ± 1.41 (n=2) | 500 "
      "| 1,000 | 20.00 ± 0.00 (n=1) |"
    )
    for line in lines
  )
  assert (
    "| ResNet-STN: stage1 | 94.00 ± 0.00 (n=1) | 95.00 ± 0.00 (n=1) | - | - "
    "| - | - | - |" in lines
  )
  gtsrb = lines.index("## GTSRB")
  assert lines[gtsrb + 2].startswith("| variant | test accuracy % |")
  assert lines[gtsrb + 4].startswith(
    "| ResNet | 91.00 ± 1.41 (n=2) | not run |"
  )
  rts = lines.index("## RTS")
  assert lines[rts + 2].startswith("| variant | test error % |")
  assert lines[rts + 4].startswith("| ResNet-STN: input | 2.00 ± 0.00 (n=1) |")
  assert (
    study.variant_label(
      {
        "model": "preact_resnet_stn",
        "placement": "input",
        "shared_stem": "true",
      }
    )
    == "ResNet-STN: input, shared stem"
  )
  keep = study.keeps(["model=preact_resnet", "placement=stage1"])
  assert keep({"model": "preact_resnet", "seed": "0"})
  assert keep({"model": "preact_resnet_stn", "placement": "stage1"})
  assert not keep({"model": "preact_resnet_stn", "placement": "input"})


def test_resnet_stn_trains_no_further_dataset_after_a_stop(
  monkeypatch, tmp_path
):
  """A SIGTERM that stops a GTSRB run ends the training: RTS is then only
  tabulated (run_in_seed_passes with report_only), not started."""
  study = experiment_script("resnet_stn")
  calls = []

  def passes(config_path, sweep_names, workdir, **kwargs):
    calls.append((os.path.basename(config_path), kwargs["report_only"]))
    status = "interrupted" if not calls[1:] else "pending"
    return [{"status": status, "name": "p", "arg": "model=preact_resnet"}], []

  monkeypatch.setattr(study, "run_in_seed_passes", passes)
  status = study.main(
    [
      f"--workdir={tmp_path / 'runs'}",
      f"--out={tmp_path / 'out.md'}",
      f"--figures={tmp_path / 'figures'}",
    ]
  )
  assert status == 0
  assert calls == [("gtsrb.py", False), ("mnist.py", True)]


def test_recipe_words_name_weight_decay_and_augmentation():
  tables = experiment_script("_tables")
  config = GTSRB.get_config("scale=cpu_long")
  words = tables.recipe_words(config)
  assert words.startswith("6,000 adam steps of 128 (0.8M examples), lr 0.001")
  assert words.endswith(
    "augmentation: rotation ±10°, scale ±0.1, shift ±0.1 of the size"
  )
  assert "weight decay" not in words
  config.weight_decay = 0.05
  assert ", weight decay 0.05, augmentation" in tables.recipe_words(config)
  plain = tables.recipe_words(GTSRB.get_config("small=true"))
  assert "augmentation" not in plain and "weight decay" not in plain
