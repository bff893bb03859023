from fedjax_med import label_stats


def test_boxes_label_mostly_background_on_acdc(data_root, monkeypatch, capsys):
  monkeypatch.setenv("FEDJAX_MED_DATA", data_root)
  assert label_stats.main(["--config", "configs/fedicra_acdc.py:fedicra,table,runlocal", "--seeds", "0"]) == 0
  lines = capsys.readouterr().out.splitlines()
  rows = {line.split(" | ")[1]: line for line in lines[2:]}
  assert sorted(rows) == ["DCM", "HCM", "MINF", "NOR", "RV"]
  nor = [float(x) for x in rows["NOR"].strip(" |").split(" | ")[4:]]
  assert nor[0] > 0.9 and nor[1] > 0.95 and nor[3] == 0.0  # boxes: most pixels labelled, nearly all background
  hcm = [float(x) for x in rows["HCM"].strip(" |").split(" | ")[4:]]
  assert hcm[3] > 0.05  # the careless annotator's strokes cross boundaries


def test_a_config_without_weak_forms_is_one_error(capsys):
  assert label_stats.main(["--config", "configs/fedavg.py"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and "weak_forms" in err and len(err.strip().splitlines()) == 1
