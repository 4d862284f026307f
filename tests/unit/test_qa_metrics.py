from ragserve.eval.qa import exact_match, f1, holds_answer, looping, normalize


def test_squad_normalisation_and_scores() -> None:
    assert normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Chief of Protocol.", ["Chief of Protocol"]) == 1.0
    assert exact_match("Chief", ["Chief of Protocol"]) == 0.0
    assert abs(f1("Chief of staff", ["Chief of Protocol"]) - 2 / 3) < 1e-9
    assert f1("", ["x"]) == 0.0 and f1("anything", []) == 0.0


def test_answer_in_passage_and_looping() -> None:
    assert holds_answer("He was born in May 18, 2018 in Paris.", ["May 18, 2018"])
    assert not holds_answer("Mayday", ["May"])
    assert looping("It is a format for data. It is a format for data.")
    assert not looping("It is a format. It stores data.")
