"""bench.pruning: replaying pruner stacks on stored curves gives exact, known figures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import pruning
from bench.corpus import BENCH_SPACE, CORPUS_DIR, PRUNING_TASKS, Corpus, build_corpus, corpus_path
from bench.replay import PrunerStack, replay_corpus, winners

TINY = Path(__file__).parent / "tiny_corpus.json"


@pytest.fixture(scope="module")
def tiny() -> Corpus:
    return Corpus.load(TINY)


def test_winners_are_the_top_quarter_or_near_the_best(tiny: Corpus) -> None:
    # Bests 0.70, 0.65, 0.40, 0.38, 0.28, 0.18, 0.10: the top quarter of 7 is the best 2.
    assert winners(tiny) == {0, 1}


def test_the_rules_before_the_noise_test_prune_the_best_curve_on_its_dip(tiny: Corpus) -> None:
    result = replay_corpus(tiny, PrunerStack("old", noise_aware=False, keep_best=False))
    # Trial 0 dips 0.22 -> 0.18 at its first fine-tune epoch (4 points on 240 images), then
    # reaches 0.70: pruned there as a shock, a false prune that hides the corpus's best.
    assert dict(result.reasons) == {"unfreeze_shock": 2, "collapse": 1, "chance": 1}
    assert result.false_prunes == 1
    assert (result.epochs_total, result.epochs_run) == (28, 23)
    assert result.best_reached == pytest.approx(0.65)
    assert result.corpus_best == pytest.approx(0.70)


def test_the_noise_aware_rules_keep_the_winner_and_catch_the_failures(tiny: Corpus) -> None:
    before = replay_corpus(tiny, PrunerStack("rules, every stop a prune", keep_best=False))
    # The collapse (epoch 3), the trial stuck at chance (epoch 2) and the wrecked BatchNorm
    # (back at chance on its first fine-tune epoch) are stopped.
    assert dict(before.reasons) == {"unfreeze_shock": 1, "collapse": 1, "chance": 1}
    result = replay_corpus(tiny, PrunerStack("rules"))
    # The same stops; but the collapse fell from 0.40 and the wreck from 0.38, far above chance
    # with 10 classes: both complete with that best. Only the trial at chance is pruned.
    assert dict(result.reasons) == {"chance": 1} and result.stopped_kept == 2
    assert result.false_prunes == before.false_prunes == 0
    assert (result.epochs_total, result.epochs_run) == (28, 24)
    assert result.epochs_saved == pytest.approx(4 / 28)
    assert result.best_reached == pytest.approx(0.70)


def test_the_median_pruner_acts_after_the_rules(tiny: Corpus) -> None:
    median = next(stack for stack in pruning.STACKS if stack.name.endswith("+ median"))
    stack = PrunerStack("rules + median", optuna_pruner=median.optuna_pruner)
    result = replay_corpus(tiny, stack)
    # The collapse and the wreck complete with their best (0.40, 0.38), so the median compares
    # with them too: after the warm-up (3 epochs), trial 4 (0.28) and trial 6 (0.18) are
    # below the completed trials' median at epoch 4, the median's call; the trial at chance
    # is the rules'.
    assert dict(result.reasons) == {"median": 2, "chance": 1}
    assert result.pruned_at == {3: 2, 4: 4, 6: 4}
    assert result.false_prunes == 0 and result.stopped_kept == 2
    assert result.epochs_run == 24


def test_quick_mode_replays_the_stored_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = Corpus.load(TINY)
    for task in ("near", "far"):
        Corpus(task, corpus.data_source, 10, 240, 0, corpus.records).save(
            corpus_path(tmp_path, task)
        )
    plots = tmp_path / "plots"
    assert pruning.main(["--quick", "--corpus-dir", str(tmp_path), "--plots", str(plots)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # One picture per task of where each stack prunes.
    for task in ("near", "far"):
        assert f"wrote {plots / f'pruning_{task}.png'}" in lines
        assert (plots / f"pruning_{task}.png").read_bytes().startswith(b"\x89PNG")
    # Both tasks count: 8 of 56 epochs saved, no winner lost.
    assert lines[-1] == "collapse rules: 14% epochs saved, 0 false prunes of top-quarter trials"
    assert lines[-4].startswith("collapse rules + median: 14% epochs saved")
    assert lines[-3].startswith("collapse rules + asha: ")
    assert lines[-2].startswith("collapse rules + hyperband: ")
    rows = [line for line in lines if line.startswith(("near ", "far "))]
    assert len(rows) == 2 * len(pruning.STACKS)


def test_quick_mode_without_a_corpus_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pruning.main(["--quick", "--corpus-dir", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: no stored corpus")
    assert not (tmp_path / "missing").exists()


def test_the_committed_corpus_figures() -> None:
    # The real curves (bench/corpus/), 30 configurations a task trained to their end.
    results = {
        (corpus.task, result.stack): result
        for corpus in (Corpus.load(corpus_path(CORPUS_DIR, t)) for t in PRUNING_TASKS)
        for result in (replay_corpus(corpus, stack) for stack in pruning.STACKS)
    }
    no_noise, not_kept = "collapse rules, no noise test", "collapse rules, best not kept"
    after = pruning.COLLAPSE_RULES
    # Far from pretraining, the rules without the noise test pruned a top-quarter fine-tune
    # (0.200 -> 0.146 at its first unfrozen epoch, 5 points on 240 images, then 0.421); with
    # it, no winner is lost, and the one shock left is a BatchNorm wreck (0.21 -> 0.10, 0.09).
    assert (results["far", no_noise].false_prunes, results["far", not_kept].false_prunes) == (1, 0)
    assert dict(results["far", not_kept].reasons) == {"unfreeze_shock": 1}
    # Near it, the guide's failure itself was a false prune, two epochs after its best: its
    # head reached 0.908, then fine-tuning all units with BatchNorm unfrozen lost 18 points.
    near = results["near", not_kept]
    assert (near.false_prunes, near.false_prunes_after_best) == (1, 1)
    # Now every fall after a good epoch keeps its best: the rules alone stop the same trials
    # (8 near, the wreck far) and lose no winner on either task.
    assert results["near", after].stopped_kept == 8 and results["far", after].stopped_kept == 1
    assert results["near", after].epochs_run == near.epochs_run
    for task in PRUNING_TASKS:
        assert results[task, after].false_prunes == 0 and not results[task, after].reasons
        # The rules alone still reach each corpus's best.
        assert results[task, after].best_reached == results[task, after].corpus_best


@pytest.mark.slow
def test_a_corpus_is_built_by_training_each_configuration_to_its_end(tmp_path: Path) -> None:
    tiny_space = dataclasses.replace(
        BENCH_SPACE,
        image_size=32,
        head_epochs=(1,),
        ft_epochs=(1,),
        unfreeze_ladder=(1,),  # one unit, so the one configuration has a fine-tune phase
        synthetic={"classes": 4, "images_per_class": 10},
        weights=None,
    )
    lines: list[str] = []
    corpus = build_corpus("far", configurations=1, space=tiny_space, progress=lines.append)
    assert (corpus.num_classes, corpus.validation_images) == (4, 12)
    (record,) = corpus.records
    # Pruning off: every epoch of the config ran, its phases recorded.
    assert [epoch.phase for epoch in record.epochs] == [1, 2]
    assert record.unfreezing_phases == (2,)
    assert record.params["unfreeze_level"] == 0 and record.seconds > 0
    assert len(lines) == 1 and lines[0].startswith("far   1/1  best ")
    loaded = Corpus.load(corpus.save(corpus_path(tmp_path, "far")))
    assert [record.params for record in loaded.records] == [r.params for r in corpus.records]
    stored = [epoch.val_accuracy for record in loaded.records for epoch in record.epochs]
    trained = [epoch.val_accuracy for record in corpus.records for epoch in record.epochs]
    assert stored == pytest.approx(trained, abs=1e-5)
