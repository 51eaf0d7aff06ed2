"""Strict grounding's vocabulary, extractive grounding's ranked quotations and checked grounding's
check (serving.grounding), with the default model's real tokenizer and the grammar engine vLLM
runs them with."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from retrieval_fixtures import real_embedder

from ragtune.core.prompt import ABSTAIN, ContextChunk, apply_context
from ragtune.serving.checking import CheckedReply, checked_reply
from ragtune.serving.grounding import (
    QUOTE_LEAD,
    allowed_token_ids,
    choice_grammar,
    polar,
    quotations,
    rank_quotations,
    sentences,
    unnamed,
)


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def prompt_ids(tokenizer, chunks: list[ContextChunk], question: str) -> list[int]:  # noqa: ANN001
    messages = apply_context([{"role": "user", "content": question}], chunks)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_the_sources_words_are_allowed_and_a_memorised_answer_is_not(tokenizer) -> None:  # noqa: ANN001
    chunks = [ContextChunk("Marseille\nThe capital of France is Lyon since 2031.", title="Atlas")]
    ids = prompt_ids(tokenizer, chunks, "What is the capital of France?")
    allowed = set(allowed_token_ids(tokenizer, ids, [c.text for c in chunks]))

    assert set(ids) <= allowed
    # A word that opens a line in the prompt is also allowed mid-sentence, with its space.
    assert set(tokenizer.encode(" Marseille", add_special_tokens=False)) <= allowed
    assert set(tokenizer.encode(" The capital of France is Lyon [1].", add_special_tokens=False)) <= allowed
    assert set(tokenizer.encode(ABSTAIN, add_special_tokens=False)) <= allowed
    assert tokenizer.eos_token_id in allowed
    # The memorised answer is in no source: none of the ways to write it is allowed.
    for paris in (" Paris", "Paris"):
        assert not set(tokenizer.encode(paris, add_special_tokens=False)) <= allowed
    assert len(allowed) < len(tokenizer) // 50  # a small slice of the vocabulary


@pytest.fixture(scope="module")
def accepts(tokenizer):  # noqa: ANN001, ANN201
    """Whether a grammar lets the engine write exactly an answer (xgrammar: vLLM's default
    backend); one compiler for the module, as the engine keeps one."""
    import xgrammar

    compiler = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))

    def check(grammar: str, answer: str) -> bool:
        matcher = xgrammar.GrammarMatcher(compiler.compile_grammar(grammar))
        return matcher.accept_string(answer) and matcher.is_completed()

    return check


def test_sentences_split_as_the_reader_was_trained() -> None:
    # A "sentence" of punctuation alone is left out: quoted, it would be a bare marker.
    assert sentences("Kublai Khan ruled . He  built\nroads. '... ! 3 bridges stand.") == [
        "Kublai Khan ruled .",
        "He built roads.",
        "3 bridges stand.",
    ]


LINES = [
    "The Heron Line runs between Pier Street and Millbrook. Trains leave every 12 minutes during the day. "
    "Bicycles are allowed outside peak hours.",
    "The Larch Line runs between Old Mill and Pembury. Trains leave every 20 minutes during the day.",
    "The Wren Line was opened in 1902. Its stations were designed by the architect Ines Varga.",
]


def test_quotations_are_runs_of_one_or_two_sentences_of_one_source() -> None:
    found = quotations(LINES[:2])
    assert ("The Heron Line runs between Pier Street and Millbrook.", 1) in found
    assert (
        "The Heron Line runs between Pier Street and Millbrook. "
        "Trains leave every 12 minutes during the day.",
        1,
    ) in found
    assert ("Trains leave every 20 minutes during the day.", 2) in found
    # 3 + 2 single sentences, 2 + 1 pairs; nothing spans two sources, no run of three.
    assert len(found) == 8
    assert not any("Bicycles" in text and "Heron" in text for text, _ in found)


@pytest.fixture(scope="module")
def embedder():  # noqa: ANN201
    return real_embedder()


def test_ranked_quotations_put_the_answering_run_first_whatever_the_source_order(embedder) -> None:  # noqa: ANN001
    for order in (LINES, LINES[::-1]):
        ranked = rank_quotations("Who designed the stations of the Wren Line?", order, embedder, k=3).quotes
        n = order.index(LINES[2]) + 1
        assert len(ranked) == 3
        assert ranked[0].endswith(f"[{n}].") and "Ines Varga" in ranked[0], ranked
    # The one sentence that answers names no line: the run with the sentence before it wins.
    ranked = rank_quotations("How often do trains run on the Larch Line?", LINES, embedder, k=2).quotes
    assert ranked[0] == (
        "The Larch Line runs between Old Mill and Pembury. Trains leave every 20 minutes during the day [2]."
    ), ranked
    empty = rank_quotations("Anything?", [], embedder, k=3)
    assert empty == ([], 0.0, 0.0, ()) and empty.lead == math.inf and empty.close(100) == []


def test_the_lead_tells_a_clear_first_quotation_from_a_close_call(embedder) -> None:  # noqa: ANN001
    notes = [*LINES, "The Heron Line is worked by 4-car Pioneer trains built in Northwind's own depot."]
    clear = rank_quotations("Who designed the stations of the Wren Line?", notes, embedder, k=3)
    assert "Ines Varga" in clear.quotes[0] and clear.lead > QUOTE_LEAD
    # "trains" and "run" are words of another run: the ranker cannot tell, the model may.
    close = rank_quotations("What trains run on the Heron Line?", notes, embedder, k=3)
    assert close.lead < QUOTE_LEAD and any("Pioneer" in q for q in close.quotes), close
    assert not any("Pioneer" in q for q in close.quotes[:1])
    assert close.behind[0] == 0 and list(close.behind) == sorted(close.behind)
    assert any("Pioneer" in q for q in close.close(QUOTE_LEAD))
    assert clear.close(QUOTE_LEAD) == clear.quotes[:1]


def test_the_model_chooses_only_among_the_quotations_close_to_the_first(embedder) -> None:  # noqa: ANN001
    """A close pair is offered without the run far behind it: both lines' opening times for
    "When does Pier Street station open?", not the line that merely names the station."""
    notes = [
        "Pier Street station on the Harbor Line opens at 5:15 on weekdays and an hour later at weekends.",
        "Pier Street station on the Falcon Line opens at 5:00 on weekdays and an hour later at weekends.",
        "The Harbor Line runs between Pier Street and Old Mill. Trains leave every 15 minutes a day.",
    ]
    ranked = rank_quotations("When does Pier Street station open on weekdays?", notes, embedder, k=3)
    assert ranked.lead < QUOTE_LEAD and ranked.behind[2] > QUOTE_LEAD, ranked
    offered = ranked.close(QUOTE_LEAD)
    assert len(offered) == 2 and all("opens at" in q for q in offered), offered
    assert ranked.close(0) == ranked.quotes[:1] and ranked.close(100) == ranked.quotes


def test_the_relevance_floor_tells_sources_about_the_question_from_others(embedder) -> None:  # noqa: ANN001
    """The closest run's cosine and share of the question's terms: near for a question the notes
    are about (even one they do not answer), far for one they are not."""
    near = rank_quotations("Who designed the stations of the Wren Line?", LINES, embedder, k=1)
    same_subject = rank_quotations("When does the Heron Line close for track works?", LINES, embedder, k=1)
    far = rank_quotations("What is the boiling point of mercury?", LINES, embedder, k=1)
    assert near.similarity > same_subject.similarity > 0.5 and far.similarity < 0.3
    assert (near.coverage, far.coverage) == (1.0, 0.0)
    assert not near.off_topic(0.62) and far.off_topic(0.62) and not far.off_topic(0.0)
    assert rank_quotations("Anything?", [], embedder, k=1).off_topic(0.1)  # nothing retrieved


def test_a_source_that_names_its_subject_once_is_measured_whole(embedder) -> None:  # noqa: ANN001
    """A source that names its subject in its first sentence and then says "it" is closer to the
    question whole than any run of one or two of its sentences: the floor takes the closer."""
    question = "Which country gave the Statue of Liberty to the United States?"
    text = (
        "The Statue of Liberty stands on an island in New York Harbor. It was dedicated in 1886. "
        "It was a gift to the United States from the people of Italy."
    )
    runs = embedder.embed([q for q, _ in quotations([text])]) @ embedder.embed_query(question)
    whole = float(embedder.embed([text]) @ embedder.embed_query(question))
    ranked = rank_quotations(question, [text], embedder, k=1)
    assert whole > runs.max() + 0.02 and ranked.similarity == whole, (whole, runs)


def test_a_yes_no_question_about_a_thing_no_source_names_is_told_apart() -> None:
    """A quotation says yes or no only of what its source names: a yes/no question's terms that
    no source holds (the words of asking left out), none for other questions."""
    assert polar("Is there wifi on the Heron Line?") and polar("does it run at night?")
    assert not polar("Who designed the stations of the Wren Line?") and not polar("")
    assert unnamed("Is there wifi on the Heron Line?", LINES) == ["wifi"]
    # "Day" is held ("during the day"); "Christmas" is not.
    assert unnamed("Does the Larch Line run on Christmas Day?", LINES) == ["christma"]
    # Named by a source (in another form: "allowed", "Bicycles"): a quotation answers.
    assert unnamed("Are bicycles allowed on the Heron Line?", LINES) == []
    assert unnamed("Can you tell me whether the Wren Line was opened in 1902?", LINES) == []
    # Asked in other words than the source's: the rule cannot tell, and abstains.
    assert set(unnamed("Can I take my bike on the Heron Line?", LINES)) == {"take", "bike"}
    # Not a yes/no question: the rule does not apply (the relevance floor does).
    assert unnamed("What is the wifi password on the Heron Line?", LINES) == []


def test_a_source_that_contradicts_the_embedder_is_not_off_topic(embedder) -> None:  # noqa: ANN001
    """The embedder learnt that Paris is France's capital: a source saying Havana is further from
    the question by cosine (about 0.61 against 0.85), under the floor, yet it holds every word
    of the question. Following such a source is what grounding is for, so it is not off topic."""
    question = "What is the capital of France?"
    true = rank_quotations(
        question, ["Paris is the capital of France. Its parliament meets in Paris."], embedder, k=1
    )
    text = "Havana is the capital of France. The government and parliament of France meets in Havana."
    conflict = rank_quotations(question, [text], embedder, k=1)
    assert true.similarity > 0.8 and conflict.similarity < 0.62 and conflict.coverage == 1.0
    assert not conflict.off_topic(0.62)


def test_a_choice_grammar_admits_the_ranked_quotations_and_the_abstention_only(accepts) -> None:  # noqa: ANN001
    ranked = [
        "Its stations were designed by the architect Ines Varga [3].",
        "The Wren Line was opened in 1902 [3].",
    ]
    grammar = choice_grammar(ranked)
    for answer in [*ranked, ABSTAIN]:
        assert accepts(grammar, answer), answer
    for answer in [
        "The Heron Line runs between Pier Street and Millbrook [1].",  # a sentence not offered
        "Its stations were designed by the architect Ines Varga [1].",  # the wrong marker
        "Its stations were designed by the architect Ines Varga.",
        "The Wren Line was opened in 1902 [3]. Its stations were designed by the architect Ines Varga [3].",
    ]:
        assert not accepts(grammar, answer), answer
    # Once the model has not opened with the abstention, the choice is among the quotations only.
    quoting = choice_grammar(ranked, abstain=False)
    assert accepts(quoting, ranked[1])
    assert not accepts(quoting, ABSTAIN)


def test_quotations_the_reply_cannot_hold_are_left_out_unless_none_fits(embedder) -> None:  # noqa: ANN001
    question = "How often do trains run on the Larch Line?"
    short = rank_quotations(question, LINES, embedder, k=3, fits=lambda answer: len(answer) < 60).quotes
    assert len(short) == 3 and all(len(answer) < 60 for answer in short), short
    assert "Trains leave every 20 minutes during the day [2]." in short  # the pair is too long
    unbounded = rank_quotations(question, LINES, embedder, k=3)
    assert rank_quotations(question, LINES, embedder, k=3, fits=lambda answer: False) == unbounded
    # The relevance floor's measures look at every run, whatever the reply can hold: a short
    # max_tokens must not make the sources look off topic.
    tight = rank_quotations(question, LINES, embedder, k=3, fits=lambda answer: len(answer) < 60)
    assert tight[1:3] == pytest.approx(unbounded[1:3])


HARBOR = [
    "The Harbor Line runs every 15 minutes during the day. Pier Street opens at 5:15 on weekdays.",
    "The Granite Line is worked by 6-car Pioneer trains.",
]
OFTEN = "How often does the Harbor Line run?"


def test_a_checked_reply_its_cited_source_holds_is_sent_as_it_is() -> None:
    for reply in [
        "The Harbor Line runs every 15 minutes during the day [1].",
        "According to [1], it runs every 15 minutes.",  # how it speaks of the source is no claim
        "Every 15 minutes [1] [2].",  # one of two cited sources holding it is enough
        "Every 15 minutes. This can be confirmed in source [1].",  # a sentence that only cites
    ]:
        assert checked_reply(reply, OFTEN, HARBOR) == reply


def test_a_checked_reply_that_names_its_answer_may_paraphrase_the_rest() -> None:
    """Its names and numbers are the claim: all held, the words around them need not be the
    source's ("was written by" where the source says "finished the novel")."""
    orwell = ["George Orwell finished the novel in 1948 on a Scottish island."]
    asked = "Who wrote the novel Nineteen Eighty-Four?"
    reply = "The novel Nineteen Eighty-Four was authored by George Orwell. This is stated in source [1]."
    assert checked_reply(reply, asked, orwell) == reply
    # One name the source lacks, and it is no answer of the source's.
    assert checked_reply("It was authored by Aldous Huxley [1].", asked, orwell) == ABSTAIN


def test_a_checked_claim_is_held_by_a_source_that_names_what_it_is_about() -> None:
    """The question's names a sentence repeats are what its claim is about: a source holding the
    claim's name but about something else does not hold it ("Copenhagen is the capital of Kenya"
    is no source for "The capital of Denmark is Copenhagen")."""
    capitals = [
        "Cairo is the capital of Denmark. The government of Denmark meets in Cairo.",
        "Copenhagen is the capital of Kenya. The government of Kenya meets in Copenhagen.",
    ]
    asked = "What is the capital of Denmark?"
    assert checked_reply("The capital of Denmark is Copenhagen [2].", asked, capitals) == ABSTAIN
    assert checked_reply("Copenhagen [2].", asked, capitals) == "Copenhagen [2]."  # says nothing of Denmark
    held = "The capital of Denmark is Cairo [1]."
    assert checked_reply(held, asked, capitals) == held
    assert checked_reply("The capital of Denmark is Cairo [2].", asked, capitals) == held


def test_a_checked_reply_gets_the_marker_of_the_source_that_holds_it() -> None:
    # One that cites nothing ends with the marker of the source that holds it.
    assert checked_reply("It runs every 15 minutes.", OFTEN, HARBOR) == "It runs every 15 minutes. [1]"
    assert checked_reply("It runs every 15 minutes [2].", OFTEN, HARBOR) == "It runs every 15 minutes [1]."
    assert checked_reply("Every 15 minutes [7].", OFTEN, HARBOR) == "Every 15 minutes [1]."  # no source 7


def test_a_checked_reply_no_source_holds_is_the_abstention() -> None:
    for reply in [
        "It runs every 20 minutes [1].",  # a number no source has
        "It runs every 15 minutes for Ines Varga [1].",  # a name no source has
        "The Harbor Line runs [1].",  # nothing but the question's words
        "[1]",
        "The trains are comfortable, clean and quiet [1].",  # most of its words in no source
        "",
    ]:
        assert checked_reply(reply, OFTEN, HARBOR) == ABSTAIN, reply
    assert checked_reply("It runs every 15 minutes [1].", OFTEN, []) == ABSTAIN
    # The model's own abstention is sent as the abstention sentence.
    assert checked_reply("The sources do not say how often it runs.", OFTEN, HARBOR) == ABSTAIN


def test_a_checked_reply_streams_from_its_first_held_claim() -> None:
    """Each sentence is judged once whole: a held claim is sent then, not when the reply ends."""
    check = CheckedReply(OFTEN, HARBOR)
    words = "According to the handbook: the Harbor Line runs every 15 minutes [1]. Pier Street opens"
    sent = {word: check.feed(word) for word in re.findall(r"\S+\s*", words)}
    # Nothing until the claim's sentence is whole (the next one has begun): then all of it.
    assert [word for word, out in sent.items() if out] == ["Pier "]
    assert sent["Pier "] == "According to the handbook: the Harbor Line runs every 15 minutes [1]."
    assert (
        check.feed(" at 5:15 on weekdays [1].") == ""
        and check.close() == " Pier Street opens at 5:15 on weekdays [1]."
    )
    assert check.verbatim


def test_a_checked_reply_ends_at_its_first_claim_no_source_holds() -> None:
    """What came before it is sent; a reply with nothing held before it is the abstention."""
    for reply, sent in [
        (
            "It runs every 15 minutes [1]. It was opened by Ines Varga in 1901.",
            "It runs every 15 minutes [1].",
        ),
        (
            "It runs every 15 minutes [1]. The sources do not say when it closes.",
            "It runs every 15 minutes [1].",
        ),
        ("It was opened in 1901. It runs every 15 minutes [1].", ABSTAIN),
        # Of the sentence that ends it, the opening clause a source holds (up to a comma).
        ("It runs every 15 minutes, says Ines Varga [1].", "It runs every 15 minutes [1]."),
        (
            "Pier Street opens at 5:15 [1]. Trains run every 15 minutes, from 1901.",
            "Pier Street opens at 5:15 [1]. Trains run every 15 minutes [1].",
        ),
        ("It was opened, says Ines Varga, in 1901 [1].", ABSTAIN),  # no opening clause names a held fact
    ]:
        assert checked_reply(reply, OFTEN, HARBOR) == sent, reply


def test_a_checked_reply_is_the_same_however_it_is_streamed() -> None:
    replies = [
        "The Harbor Line runs every 15 minutes during the day [1].",
        "Every 15 minutes. This can be confirmed in source [1].",
        "It runs every 15 minutes [2]. Pier Street opens at 5:15 [1].",
        "It runs every 15 minutes.  The Granite Line has 6-car trains [2].",
        "It runs every 15 minutes [1]. It was opened by Ines Varga in 1901.",
        "It runs every 15 minutes [1]. Pier Street opens at 5:15, as Ines Varga wrote in 1901.",
        "The trains are comfortable, clean and quiet [1].",
        "The Harbor Line runs frequently during the day [1].",
    ]
    for reply in replies:
        whole = checked_reply(reply, OFTEN, HARBOR)
        for size in (1, 3, 7):
            check = CheckedReply(OFTEN, HARBOR)
            streamed = "".join(check.feed(reply[i : i + size]) for i in range(0, len(reply), size))
            assert streamed + check.close() == whole, (reply, size)
