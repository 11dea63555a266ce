
from livecc.data.words import Word
from livecc.demo import DemoConfig, run_demo, word_f1


def test_word_f1_matches_words_within_the_tolerance():
    truth = [Word(1.0, 1.2, "red"), Word(1.3, 1.5, "circle"), Word(5.0, 5.2, "red")]
    said = [Word(2.0, 2.0, "red"), Word(2.0, 2.0, "circle"), Word(2.0, 2.0, "red"), Word(9.0, 9.0, "blue")]
    score = word_f1(said, truth)
    # "red" at 2.0 matches the red at 1.2 (0.8 s); the second "red" is 3.2 s from the other one.
    assert (score["precision"], score["recall"]) == (0.5, 2 / 3)
    assert word_f1([], truth)["f1"] == 0.0


def test_shortened_demo_learns_from_the_pixels(tmp_path, capsys):
    # About 6 minutes on 2 CPU cores: fewer held-out clips and steps than the demo, no real-time wait.
    result = run_demo(DemoConfig(out=str(tmp_path), train_clips=96, test_clips=4, steps=350, realtime=False))
    scores = result["scores"]
    trained, untrained, blank = scores["trained"], scores["untrained"], scores["trained, blank frames"]
    assert trained["f1"] > untrained["f1"] + 0.2
    assert trained["f1"] > blank["f1"]  # with the frames blanked it falls back to its prior
    printed = capsys.readouterr().out
    assert "| trained |" in printed and "timings:" in printed
