"""The inspector's day in the browser: a labeler labels by keyboard only, a reviewer accepts one
label and rejects another, the QA owner decides the dispute, the audit page shows every step; a
half-typed label survives a live queue update; the line operator overrides with one click."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from linesight.common.identity import Grant, Principal
from linesight.labeling.app.labeling import LabelingApp

from .conftest import ANN, BOB, OLGA, PLANT, PRODUCT, QUINN, UiStack, no_errors, shot

pytestmark = pytest.mark.integration


async def open_frame(page: Page, frame_id: str, mode: str) -> None:
    await page.goto(f"/frames/{frame_id}?queue=review")
    await expect(page.locator("body")).to_have_attribute("data-ready", mode)
    await expect(page.locator("body")).to_have_attribute("data-viewer-open", "1")


async def labels_of(app: LabelingApp, frame_id: str) -> list[tuple[str, str, bool | None]]:
    return [(x.kind, x.label, x.accepted) for x in await app.frame_labels(frame_id)]


async def test_half_typed_label_survives_a_live_queue_update(ui: UiStack) -> None:
    frame = await ui.frame("crack")
    page = await ui.login(ANN)
    await page.goto(f"/frames/{frame}?queue=review&poll=300")
    await expect(page.locator("body")).to_have_attribute("data-ready", "label")
    await page.keyboard.press("3")  # crack
    await page.keyboard.press("c")
    await page.keyboard.type("half-typed: hairline near the ed")
    await page.evaluate("window.__sameDocument = true")
    depth = int(await page.locator("#queue-depth").inner_text())

    await ui.frame("pit")  # a new result enters the queue while the labeler types
    await expect(page.locator("#queue-depth")).to_have_text(str(depth + 1))

    assert await page.evaluate("window.__sameDocument") is True  # data was polled, no reload
    await expect(page.locator("#comment")).to_have_value("half-typed: hairline near the ed")
    await expect(page.locator("#comment")).to_be_focused()
    await expect(page.locator("#classes button.on")).to_have_text("3 crack")
    await shot(page, "01-half-typed-label-after-queue-update")
    no_errors(page)
    await page.context.close()


async def test_keyboard_labeling_review_dispute_and_audit(ui: UiStack) -> None:
    accepted, disputed = await ui.frame("scratch"), await ui.frame("stain")

    # The labeler: class, severity and a box, by keyboard only.
    ann = await ui.login(ANN)
    await shot(ann, "02-queue-labeler")
    await open_frame(ann, accepted, "label")
    await expect(ann.locator("#form")).to_be_visible()
    await expect(ann.locator("nav.top")).not_to_contain_text("Audit")  # a labeler has no audit page
    for key in ("2", "s", "s", "b", "ArrowRight", "Shift+ArrowDown"):  # scratch, minor, a box moved and grown
        await ann.keyboard.press(key)
    await expect(ann.locator("#regions li")).to_have_count(1)
    await ann.keyboard.press("b")
    await ann.keyboard.press("u")  # undo the second box
    await expect(ann.locator("#regions li")).to_have_count(1)
    await shot(ann, "03-labeling-keyboard-box")
    await ann.keyboard.press("Enter")
    await ann.wait_for_url(lambda url: accepted not in url)

    first = [x for x in await ui.app.frame_labels(accepted) if x.kind == "label"]
    assert [(x.label, x.severity, x.author) for x in first] == [("scratch", "minor", first[0].author)]
    (box,) = first[0].boxes
    assert box["x_max"] - box["x_min"] == 256 // 8 and box["y_max"] - box["y_min"] == 256 // 8 + 4
    assert box["x_min"] == 112 + 4  # centred, then moved one step right

    await open_frame(ann, disputed, "label")
    for key in ("5", "s", "s", "s", "b"):  # stain, major, a box
        await ann.keyboard.press(key)
    await ann.keyboard.press("Enter")
    await ann.wait_for_url(lambda url: disputed not in url)
    no_errors(ann)

    # The reviewer: accept one, reject the other with a reason and a correction.
    bob = await ui.login(BOB)
    await open_frame(bob, accepted, "review")
    await expect(bob.locator("#earlier")).to_contain_text("scratch")
    await bob.keyboard.press("a")
    await bob.wait_for_url(lambda url: accepted not in url)
    await open_frame(bob, disputed, "review")
    await bob.keyboard.press("4")  # correction: pit
    await bob.keyboard.press("r")
    await expect(bob.locator("#reason")).to_be_focused()
    await bob.keyboard.type("pits, not a stain")
    await shot(bob, "04-review-reject-with-correction")
    await bob.keyboard.press("Control+Enter")
    await bob.wait_for_url(lambda url: disputed not in url)
    assert ("review", "scratch", True) in await labels_of(ui.app, accepted)
    assert ("review", "pit", False) in await labels_of(ui.app, disputed)
    no_errors(bob)

    # The QA owner sees both labels side by side and decides.
    quinn = await ui.login(QUINN)
    await open_frame(quinn, disputed, "decide")
    await expect(quinn.locator("#earlier .labels > div")).to_have_count(2)
    await expect(quinn.locator("#earlier")).to_contain_text("stain")
    await expect(quinn.locator("#earlier")).to_contain_text("pits, not a stain")
    await shot(quinn, "05-dispute-side-by-side")
    await quinn.keyboard.press("4")
    await quinn.keyboard.press("Enter")  # a decision needs a reason: the field takes focus
    await expect(quinn.locator("#reason")).to_be_focused()
    await quinn.keyboard.type("pitting under magnification")
    await quinn.keyboard.press("Control+Enter")
    await quinn.wait_for_url(lambda url: disputed not in url)
    assert ("decision", "pit", None) in await labels_of(ui.app, disputed)

    # The audit page shows each step of the frame, and the chain's state as the server verifies it.
    await quinn.goto("/audit")
    broken, head = await ui.app.trail.verify(), await ui.app.trail.head()
    assert head is not None
    chain = f"chain intact: {head.seq} records" if broken is None else f"chain BROKEN at record {broken.seq}"
    await expect(quinn.locator("#chain")).to_contain_text(chain)
    await quinn.fill("input[name=object_id]", disputed)
    await quinn.click("#audit-filters button")
    rows = quinn.locator("#records tr")
    for action, who in (("label.submit", ANN), ("label.review", BOB), ("dispute.decide", QUINN)):
        await expect(rows.filter(has_text=action).filter(has_text=who)).to_have_count(1)
    await expect(rows.filter(has_text="dispute.decide")).to_contain_text("pitting under magnification")
    await shot(quinn, "06-audit-filtered")
    no_errors(quinn)
    for page in (ann, bob, quinn):
        await page.context.close()


async def test_line_operator_overrides_with_one_click(ui: UiStack) -> None:
    frame = await ui.frame("crack", station="st9", confidence=0.95, queued=False)
    olga = await ui.login(OLGA)
    await expect(olga.locator("nav.top")).to_contain_text("Line")
    await olga.goto("/operator?poll=500")
    await olga.select_option("#station", "st9")
    row = olga.locator(f"tr[data-frame='{frame}']")
    await row.get_by_role("button", name="pass it").click()
    await expect(row).to_contain_text("overridden")
    await shot(olga, "07-operator-override")
    assert ("override", "good", None) in await labels_of(ui.app, frame)
    no_errors(olga)
    await olga.context.close()


def person(role: str, subject: str) -> Principal:
    return Principal(subject, subject, "user", (Grant.parse(f"{role}@{PLANT}/{PRODUCT}"),))


async def test_queue_page_filters_and_updates_live(ui: UiStack) -> None:
    page = await ui.login(ANN)
    await page.goto("/queue?poll=300")
    await page.evaluate("window.__sameDocument = true")
    await expect(page.locator("#updated")).not_to_have_text("0")
    await page.select_option("select[name=reason]", "LOW_CONFIDENCE")
    await expect(page.locator("select[name=station] option[value='line1/st7']")).to_have_count(0)

    frame = await ui.frame("pit", station="st7")  # arrives while the page is open
    await expect(page.locator("select[name=station] option[value='line1/st7']")).to_have_count(1)
    await page.select_option("select[name=station]", "line1/st7")
    await expect(page.locator("#items tr")).to_have_count(1)
    await expect(page.locator(f"#items tr[data-frame='{frame}']")).to_contain_text("pit")
    depth = await ui.app.queue_stats()
    review = next(s for s in depth if s.queue == "review")
    await expect(page.locator(".card[data-queue=review] .depth")).to_have_text(str(review.depth))
    assert await page.evaluate("window.__sameDocument") is True
    await shot(page, "08-queue-filtered-live")

    await ui.frame("stain")  # so there is a next frame to prefetch
    await page.locator(".card[data-queue=review] button.claim").click()  # claim next opens a frame
    await expect(page.locator("body")).to_have_attribute("data-ready", "label")
    await expect(page.locator("body")).to_have_attribute("data-prefetched", re.compile("[0-9a-f]{32}"))
    await page.keyboard.press("?")
    await expect(page.locator("#help")).to_be_visible()
    await shot(page, "09-keyboard-help")
    await page.keyboard.press("Escape")
    await expect(page.locator("#help")).to_be_hidden()
    await expect(page.locator("body")).to_have_attribute("data-viewer-open", "1")
    await page.keyboard.press("h")  # heatmap off, and on again
    assert await page.evaluate("heat.getOpacity()") == 0
    await page.keyboard.press("h")
    assert await page.evaluate("heat.getOpacity()") == pytest.approx(0.4)
    no_errors(page)
    await page.context.close()


async def test_agreement_dashboard_shows_the_servers_figures(ui: UiStack) -> None:
    frames = [await ui.frame(label) for label in ("scratch", "crack", "pit")]
    owner = person("qa_owner", QUINN)
    sample = await ui.app.create_sample(owner, "shift sample", frames)
    for rater, labels in (
        (person("labeler", ANN), ("scratch", "crack", "pit")),
        (owner, ("scratch", "crack", "stain")),
    ):
        for frame, label in zip(frames, labels, strict=True):
            await ui.app.sample_label(rater, sample.id, frame, label)
    figures = await ui.app.agreement(sample.id)

    quinn = await ui.login(QUINN)
    await quinn.goto(f"/agreement?sample={sample.id}")
    await expect(quinn.locator("#fleiss")).to_have_text(f"{figures.fleiss_kappa:.3f}")
    await expect(quinn.locator("#pairs tr")).to_have_count(len(figures.pairs))
    await expect(quinn.locator("#confusion")).to_contain_text("stain")
    assert await quinn.evaluate("Object.keys(charts).length") == 2
    await shot(quinn, "10-agreement")
    no_errors(quinn)
    await quinn.context.close()
