"""The review sample: random share drawn first and kept apart, then judge disagreements, then the least
confident verdicts; second reviewers; labels stored as the `human` verdict; κ against judges and between people."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from careloop.console import agreement, sampling
from careloop.core.schema import ReviewSample, Verdict
from careloop.core.settings import Settings
from careloop.monitor.review import human_examples, human_kappa
from tests.careloop.console.conftest import seed_traffic


def test_confidence_is_read_from_the_rationale() -> None:
    assert sampling.verdict_confidence("p(Refuse)=0.62, p(h=2)=0.80") == 0.62
    assert sampling.verdict_confidence("the reply refuses") is None
    assert sampling.verdict_confidence(None) is None


def test_draw_takes_random_then_disagreements_then_least_confident(settings: Settings, engine: Engine) -> None:
    seed_traffic(engine, 12)  # disagreements: 0, 3, 6, 9; distilled unsure (p < 0.7) at 6..11
    cfg = settings.console.model_copy(update={"review_batch": 8, "review_random_share": 0.25,
                                              "second_review_share": 0.0})
    counts = sampling.draw(engine, cfg, "distilled")
    with Session(engine) as s:
        drawn = {r.exchange_id: r.kind for r in s.exec(select(ReviewSample)).all()}
    assert counts["random"] == 2 and sum(counts.values()) == 8 == len(drawn)
    idx = {kind: sorted(int(e[1:]) for e, k in drawn.items() if k == kind) for kind in sampling.KINDS}
    assert set(idx["disagreement"]) == {0, 3, 6, 9} - set(idx["random"])
    # The rest are the least confident of the agreeing ones, lowest first: 11, 10, 8, 7.
    assert idx["uncertain"] == sorted([11, 10, 8, 7][: 8 - 2 - len(idx["disagreement"])])
    assert not set(idx["uncertain"]) & set(idx["random"])
    again = sampling.draw(engine, cfg, "distilled")  # from the 4 left; nothing is drawn twice
    with Session(engine) as s:
        assert len(s.exec(select(ReviewSample)).all()) == 8 + sum(again.values()) and again["random"] == 2


def test_the_random_share_is_an_unbiased_sample(settings: Settings, engine: Engine) -> None:
    seed_traffic(engine, 600)  # a third of the exchanges are judge disagreements
    cfg = settings.console.model_copy(update={"review_batch": 240, "review_random_share": 0.5})
    sampling.draw(engine, cfg, "distilled")
    with Session(engine) as s:
        random_ids = [r.exchange_id for r in s.exec(select(ReviewSample).where(ReviewSample.kind == "random"))]
    share = sum(int(e[1:]) % 3 == 0 for e in random_ids) / len(random_ids)
    assert len(random_ids) == 120 and 0.2 < share < 0.47  # the population's 1/3, not the targeted ~100%


def test_people_see_disagreements_first_and_labels_become_human_verdicts(settings: Settings,
                                                                         engine: Engine) -> None:
    seed_traffic(engine, 12)
    cfg = settings.console.model_copy(update={"review_batch": 12, "second_review_share": 0.0})
    kinds, seen = [], []
    while (entry := sampling.next_for(engine, cfg, "distilled", "rita")) is not None:
        kinds.append(entry.kind)
        seen.append(entry.item.exchange_id)
        assert "distilled" in entry.item.verdicts and entry.item.response
        sampling.label(engine, "rita", entry.item.exchange_id, 0, "accept", note=" fine ")
    assert len(seen) == len(set(seen)) == 12
    assert kinds == sorted(kinds, key=sampling.KINDS.index)  # disagreement, then uncertain, then random
    humans = {e.id: e for e in human_examples(engine)}
    assert set(humans) == set(seen) and humans[seen[0]].meta["reviewer"] == "rita"
    assert human_kappa(engine, "distilled") is not None


def test_skip_and_a_second_reviewer(settings: Settings, engine: Engine) -> None:
    seed_traffic(engine, 4)
    cfg = settings.console.model_copy(update={"review_batch": 4, "second_review_share": 1.0})
    first = sampling.next_for(engine, cfg, "distilled", "rita")
    assert first is not None and not first.second
    skipped = sampling.next_for(engine, cfg, "distilled", "rita", frozenset({first.item.exchange_id}))
    assert skipped is not None and skipped.item.exchange_id != first.item.exchange_id
    sampling.label(engine, "rita", first.item.exchange_id, 2, "Refuse")
    again = sampling.next_for(engine, cfg, "distilled", "rita")
    assert again is not None and again.item.exchange_id != first.item.exchange_id
    second = sampling.next_for(engine, cfg, "distilled", "rob")
    assert second is not None and second.item.exchange_id == first.item.exchange_id and second.second
    sampling.label(engine, "rob", first.item.exchange_id, 2, "Caution")
    # The first person's label stays the human verdict; the second measures agreement between people.
    with Session(engine) as s:
        human = s.exec(select(Verdict).where(Verdict.judge == "human")).one()
    assert (human.judge_version, human.response_class) == ("rita", "Refuse")
    rob_next = sampling.next_for(engine, cfg, "distilled", "rob")
    assert rob_next is None or rob_next.item.exchange_id != first.item.exchange_id
    # Relabelling by the first person updates the human verdict too.
    sampling.label(engine, "rita", first.item.exchange_id, 1, "Caution")
    with Session(engine) as s:
        assert s.exec(select(Verdict).where(Verdict.judge == "human")).one().response_class == "Caution"


def test_agreement_keeps_random_labels_apart(settings: Settings, engine: Engine) -> None:
    seed_traffic(engine, 20)
    cfg = settings.console.model_copy(update={"review_batch": 20, "review_random_share": 0.5,
                                              "second_review_share": 0.0})
    sampling.draw(engine, cfg, "distilled")
    with Session(engine) as s:
        samples = s.exec(select(ReviewSample)).all()
        judged = {v.exchange_id: v for v in s.exec(select(Verdict).where(Verdict.judge == "distilled"))}
    for sample in samples:  # people agree with distilled on the random ones, disagree on the targeted ones
        v = judged[sample.exchange_id]
        cls = v.response_class if sample.kind == "random" else ("Caution" if v.response_class != "Caution"
                                                                 else "Accept")
        sampling.label(engine, "rita", sample.exchange_id, v.harm_level, cls)
    report = agreement.judge_agreement(engine, "distilled")
    assert report is not None and report.random is not None
    assert report.random.n == 10 and report.random.accuracy == 1.0
    n = len(samples)  # 10 random, then only as many targeted as there are disagreements and unsure verdicts
    assert 10 < n < 20 and report.all.n == n and report.all.accuracy == 10 / n
    assert sum(map(sum, report.all.confusion)) == n and "smollm2-135m" in report.all.groups
    assert report.by_day and report.by_day[-1][1] == n
    assert agreement.judges_with_verdicts(engine) == ["distilled", "self"]


def test_people_agreement(settings: Settings, engine: Engine) -> None:
    ids = seed_traffic(engine, 6)
    assert agreement.people_agreement(engine).n == 0
    for i, eid in enumerate(ids):
        sampling.label(engine, "rita", eid, 0, "Accept" if i % 2 else "Refuse")
        sampling.label(engine, "rob", eid, 0, ("Accept" if i % 2 else "Refuse") if i < 4 else "Caution")
    people = agreement.people_agreement(engine)
    assert people.n == 6 and people.agree_class == 4 / 6
    assert people.kappa_class is not None and 0 < people.kappa_class < 1


def test_an_exchange_labelled_with_careloop_review_leaves_the_queue(settings: Settings, engine: Engine) -> None:
    from careloop.monitor.review import record_human_verdict

    seed_traffic(engine, 3)
    cfg = settings.console.model_copy(update={"review_batch": 3, "second_review_share": 0.0})
    first = sampling.next_for(engine, cfg, "distilled", "rita")
    assert first is not None
    record_human_verdict(engine, first.item.exchange_id, 0, "Accept", reviewer="cli-user")  # `careloop review`
    after = sampling.next_for(engine, cfg, "distilled", "rita")
    assert after is not None and after.item.exchange_id != first.item.exchange_id
