"""The notes' items, sections and facts, and the check every rewording must pass (no model needed)."""

from __future__ import annotations

from rma.services.apps.advice_notes import MATTERS, OURS, YOURS, facts_of, problems, split_notes

NOTES = """Client owes £1,250.00 council tax arrears to Leeds City Council, summons issued 14/03/2026.
- Discussed Universal Credit claim; payment of £612.40 due on 2 April 2026.
* We will write to British Gas to ask for a 30 day hold on the £840 energy debt.
1. Client to send last 3 months bank statements by 20/04/2026.
Lowell Portfolio chasing £2,310 catalogue debt, account ending 4471."""


def test_items_fall_into_sections_by_wording() -> None:
    notes = split_notes(NOTES)
    assert [n.section for n in notes] == [MATTERS, MATTERS, OURS, YOURS, MATTERS]
    assert notes[1].text.startswith("Discussed Universal Credit")  # the bullet is gone


def test_headings_set_the_section_of_the_lines_below() -> None:
    notes = split_notes("Your actions: ring StepChange. Send payslips.\nOur actions\nChase Barclays.\n"
                        "Matters discussed:\nWe will see.")
    assert [(n.section, n.text) for n in notes] == [
        (YOURS, "ring StepChange."), (YOURS, "Send payslips."), (OURS, "Chase Barclays."), (MATTERS, "We will see.")]


def test_facts_are_normalised_so_the_wording_may_differ() -> None:
    facts = facts_of("Client owes £1,250.00 to Leeds City Council, summons issued 14/03/2026, ref 88123.")
    assert facts.amounts == {125000} and facts.dates == {(14, 3, 2026)} and facts.numbers == {"88123"}
    assert facts.names == {"leeds city council"}
    assert problems(facts, "You owe £1250 to Leeds City Council. They issued a summons on 14 March 2026 "
                           "(reference 88123).") == []


def test_a_changed_or_invented_fact_is_caught() -> None:
    facts = split_notes(NOTES)[0].facts
    assert problems(facts, "Send the council £100 by Friday.") == [
        "dropped £1,250.00", "added £100.00", "dropped the date 14/3", "dropped 'leeds city council'"]
    assert problems(facts, "You owe £1,250 to Leeds City Council and Barclays, summons of 14/03/2026.") == [
        "added 'barclays'"]
    assert problems(facts_of("Payment due 2 April 2026."), "Payment due 2 April 2025.") == [
        "dropped the date 2/4", "added the date 2/4"]


def test_a_sentence_opening_word_is_not_taken_for_a_name() -> None:
    assert facts_of("Send Lowell your statement. Ring them.").names == {"lowell"}
    assert problems(facts_of("Client to ring them."), "Please ring them today.") == []
