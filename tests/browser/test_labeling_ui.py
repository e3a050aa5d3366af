"""The inspector's day in the browser: a labeler labels by keyboard only, a reviewer accepts one
label and rejects another, the QA owner decides the dispute, the audit page shows every step; a
half-typed label survives a live queue update; the line operator overrides with one click."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout
from sklearn.metrics import cohen_kappa_score

from linesight.common.identity import Grant, Principal
from linesight.common.identity.users import PgUserStore
from linesight.labeling.app.labeling import LabelingApp

from .conftest import (
    ANN,
    BOB,
    DEFINITIONS,
    EDITED_PRODUCT,
    OLGA,
    PLANT,
    PRODUCT,
    QUINN,
    UiStack,
    no_errors,
    shot,
)

pytestmark = pytest.mark.integration


async def open_frame(page: Page, frame_id: str, mode: str) -> None:
    await page.goto(f"/frames/{frame_id}?queue=review")
    try:
        await expect(page.locator("body")).to_have_attribute("data-ready", mode)
        await expect(page.locator("body")).to_have_attribute("data-viewer-open", "1")
    except AssertionError as exc:
        raise AssertionError(f"frame {frame_id} not ready as {mode}; page errors: {page.errors}") from exc  # type: ignore[attr-defined]


async def moved_on(page: Page, frame_id: str) -> None:
    """The page went on to another frame (or the queue) after acting on `frame_id` and the server
    confirmed what was sent (the label travels while the next frame is shown; the page leaves for
    the queue only once it is kept); when not, the failure quotes what the page said (a refused
    label shows its reason there)."""
    try:
        await page.wait_for_url(lambda url: frame_id not in url, timeout=15_000)
        if "/frames/" in page.url:
            await page.wait_for_function(f"document.body.dataset.saved === {frame_id!r}", timeout=15_000)
    except PlaywrightTimeout:
        said = await page.locator("#flash").inner_text()
        await shot(page, f"failed-{frame_id[:8]}")
        raise AssertionError(f"not moved on from {frame_id} with it saved: the page says {said!r}") from None


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
    model_classes = ("scratch", "crack", "pit", "stain", "stain")
    frames = [await ui.frame(c) for c in model_classes]
    accepted, disputed = frames[:4], frames[4]

    # The labeler: class, severity, a box and a polygon on each of five frames, by keyboard only.
    ann = await ui.login(ANN)
    await shot(ann, "02-queue-labeler")
    await expect(ann.locator("nav.top")).not_to_contain_text("Audit")  # a labeler has no audit page
    await expect(ann.locator("nav.top")).not_to_contain_text("Taxonomy")  # nor the taxonomy editor
    assert (await ann.request.get("/taxonomy")).status == 403
    for n, (frame, model_class) in enumerate(zip(frames, model_classes, strict=True)):
        await open_frame(ann, frame, "label")
        await expect(ann.locator("#form")).to_be_visible()
        number = str(2 + ["scratch", "crack", "pit", "stain"].index(model_class))  # "good" is 1
        if n == 0:
            # The model's class and its severity (minor) kept; a box moved and grown; a second
            # box undone; a polygon.
            keys: tuple[str, ...] = (number, "b", "ArrowRight", "Shift+ArrowDown", "b", "u", "v")
        else:
            keys = (number, "s", "b", "v")  # one severity up: major
        for key in keys:
            await ann.keyboard.press(key)
        await expect(ann.locator("#regions li")).to_have_count(2)
        if n == 0:
            await shot(ann, "03-labeling-keyboard-box-and-polygon")
        await ann.keyboard.press("Enter")
        await moved_on(ann, frame)

    first = {f: [x for x in await ui.app.frame_labels(f) if x.kind == "label"] for f in frames}
    for n, (frame, model_class) in enumerate(zip(frames, model_classes, strict=True)):
        (label,) = first[frame]
        assert (label.label, label.severity) == (model_class, "minor" if n == 0 else "major")
        assert len(label.boxes) == 1 and len(label.polygons) == 1
        assert len(label.polygons[0]["points"]) == 4
    (box,) = first[frames[0]][0].boxes
    assert box["x_max"] - box["x_min"] == 256 // 8 and box["y_max"] - box["y_min"] == 256 // 8 + 4
    assert box["x_min"] == 112 + 4  # centred, then moved one step right
    no_errors(ann)

    # The reviewer: accept four, reject the fifth with a reason and a correction.
    bob = await ui.login(BOB)
    for frame in accepted:
        await open_frame(bob, frame, "review")
        await expect(bob.locator("#regions li")).to_have_count(2)  # the labeler's regions, shown
        await bob.keyboard.press("a")
        await moved_on(bob, frame)
    await open_frame(bob, disputed, "review")
    await expect(bob.locator("#earlier")).to_contain_text("stain")
    await bob.keyboard.press("4")  # correction: pit
    await bob.keyboard.press("r")
    await expect(bob.locator("#reason")).to_be_focused()
    await bob.keyboard.type("pits, not a stain")
    await shot(bob, "04-review-reject-with-correction")
    await bob.keyboard.press("Control+Enter")
    await moved_on(bob, disputed)
    for frame, model_class in zip(accepted, model_classes, strict=False):
        assert ("review", model_class, True) in await labels_of(ui.app, frame)
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
    await moved_on(quinn, disputed)
    assert ("decision", "pit", None) in await labels_of(ui.app, disputed)

    # The audit page shows each step, and the chain's state as the server verifies it.
    await quinn.goto("/audit")
    broken, head = await ui.app.trail.verify(), await ui.app.trail.head()
    assert head is not None
    chain = f"chain intact: {head.seq} records" if broken is None else f"chain BROKEN at record {broken.seq}"
    await expect(quinn.locator("#chain")).to_contain_text(chain)
    rows = quinn.locator("#records tr")
    for frame in accepted:
        await quinn.fill("input[name=object_id]", frame)
        await quinn.click("#audit-filters button")
        mine = rows.filter(has_text=frame[:16])
        for action, who in (("label.submit", ANN), ("label.review", BOB)):
            await expect(mine.filter(has_text=action).filter(has_text=who)).to_have_count(1)
    await quinn.fill("input[name=object_id]", disputed)
    await quinn.click("#audit-filters button")
    for action, who in (("label.submit", ANN), ("label.review", BOB), ("dispute.decide", QUINN)):
        await expect(rows.filter(has_text=action).filter(has_text=who)).to_have_count(1)
    await expect(rows.filter(has_text="dispute.decide")).to_contain_text("pitting under magnification")
    await shot(quinn, "06-audit-filtered")

    # The agreement page shows this labeler and this reviewer as a pair: five frames, and the
    # kappa of the labeler's classes against the classes the review settled on.
    await quinn.goto("/agreement")
    pair = quinn.locator("#workflow-pairs tr").filter(has_text=ANN).filter(has_text=BOB)
    reviewed = [*model_classes[:4], "pit"]
    kappa = cohen_kappa_score(list(model_classes), reviewed)
    await expect(pair.locator("td")).to_have_text([ANN, BOB, "5", f"{kappa:.3f}"])
    await quinn.wait_for_function("charts['workflow-kappa'] && charts['workflow-by-reviewer']")
    pair_names = await quinn.evaluate("charts['workflow-kappa'].data.labels")
    assert f"{ANN} · {BOB}" in pair_names, pair_names
    await shot(quinn, "06b-agreement-labeler-reviewer-pair")
    no_errors(quinn)
    for page in (ann, bob, quinn):
        await page.context.close()


async def test_next_frame_is_swapped_in_place(ui: UiStack) -> None:
    """Submitting moves on without a page load: the next frame (prefetched) replaces the picture,
    the panel, the draft and the URL in the same document, takes keys at once, and `p` goes back
    to the frame just labeled, now shown as it is (labeled: view only for a labeler)."""
    first = await ui.frame("crack")
    await ui.frame("pit")  # so the queue has a next frame
    ann = await ui.login(ANN)
    await open_frame(ann, first, "label")
    await expect(ann.locator("body")).to_have_attribute("data-prefetched", re.compile("[0-9a-f]{32}"))
    upcoming = await ann.locator("body").get_attribute("data-prefetched")
    await ann.evaluate("window.__sameDocument = true")
    for key in ("3", "b", "Enter"):  # crack, a box, submit
        await ann.keyboard.press(key)
    await moved_on(ann, first)
    await expect(ann.locator("#flash")).to_contain_text(f"saved {first[:12]}: first_pass")
    await expect(ann.locator("body")).to_have_attribute("data-ready", "label")
    await expect(ann.locator("body")).to_have_attribute("data-viewer-open", "1")
    shown = await ann.evaluate("view.frame_id")
    assert shown == upcoming and ann.url.endswith(f"/frames/{shown}?queue=review"), (shown, ann.url)
    assert await ann.evaluate("window.__sameDocument") is True  # no page load
    source = await ann.evaluate("imageItem().source.url")
    assert source.removeprefix(ui.base_url) == f"/api/frames/{shown}/image", source
    await expect(ann.locator("#frame-id")).to_have_text(shown[:16])
    await expect(ann.locator("#regions li")).to_have_count(0)  # a fresh draft
    await expect(ann.locator("#classes button.on")).to_have_count(0)
    (label,) = [x for x in await ui.app.frame_labels(first) if x.kind == "label"]
    assert (label.label, len(label.boxes)) == ("crack", 1)

    # The new frame takes keys and drawing; undo stops at its own first change.
    for key in ("4", "v"):
        await ann.keyboard.press(key)
    await expect(ann.locator("#regions li")).to_have_count(1)
    assert await ann.evaluate("anno.getAnnotations().length") == 1
    for _ in range(3):
        await ann.keyboard.press("u")
    await expect(ann.locator("#flash")).to_have_text("nothing to undo")
    await expect(ann.locator("#classes button.on")).to_have_count(0)

    # Back to the frame just labeled, in place; the browser's back button returns.
    await ann.keyboard.press("p")
    await expect(ann.locator("#frame-id")).to_have_text(first[:16])
    await expect(ann.locator("body")).to_have_attribute("data-ready", "view")
    await expect(ann.locator("#earlier")).to_contain_text("crack")
    await expect(ann.locator("#form")).to_be_hidden()
    assert ann.url.endswith(f"/frames/{first}?queue=review")
    await ann.go_back()
    await expect(ann.locator("#frame-id")).to_have_text(shown[:16])
    await expect(ann.locator("body")).to_have_attribute("data-ready", "label")
    assert await ann.evaluate("window.__sameDocument") is True
    await shot(ann, "07a-next-frame-in-place")
    no_errors(ann)
    await ann.context.close()


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
    assert await page.evaluate("Number(heat.style.opacity)") == 0
    await page.keyboard.press("h")
    assert await page.evaluate("Number(heat.style.opacity)") == pytest.approx(0.4)
    assert await page.evaluate("heat.complete && heat.naturalWidth") == 256  # the heatmap's pixels
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
    assert await quinn.evaluate("Boolean(charts['by-class'] && charts['by-station'])")
    await shot(quinn, "10-agreement")
    no_errors(quinn)
    await quinn.context.close()


async def viewer_point(page: Page, x: float, y: float) -> tuple[float, float]:
    """Where image pixel (x, y) is on the page, by the viewer's own mapping."""
    point = await page.evaluate(
        """([x, y]) => {
          const p = imageItem().imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
          const box = document.getElementById("viewer").getBoundingClientRect();
          return [box.left + p.x, box.top + p.y];
        }""",
        [x, y],
    )
    return float(point[0]), float(point[1])


async def test_regions_drawn_with_the_mouse_are_submitted(ui: UiStack) -> None:
    frame = await ui.frame("crack")
    ann = await ui.login(ANN)
    await open_frame(ann, frame, "label")
    # The frame comes from this origin, under the session (no presigned S3 address in the page).
    source = await ann.evaluate("imageItem().source.url")
    assert source.removeprefix(ui.base_url) == f"/api/frames/{frame}/image", source
    assert "X-Amz-" not in await ann.content()

    # The class's definition and gallery stand beside the image.
    await ann.keyboard.press("3")  # crack
    card = ann.locator("#definition")
    await expect(card).to_contain_text(DEFINITIONS["crack"])
    gold = card.locator(".gallery.gold img")
    await expect(gold).to_have_count(1)
    await expect(card.locator(".gallery.hard_negative img")).to_have_count(1)
    await expect(card).to_contain_text("a scratch, not a crack")
    await ann.wait_for_function(
        "() => { const i = document.querySelector('#definition .gallery.gold img'); return i && i.complete; }"
    )
    assert await gold.evaluate("img => img.naturalWidth") == 256  # the gold frame's pixels, same origin

    # A box: drag with the rectangle tool.
    await ann.keyboard.press("d")
    x0, y0 = await viewer_point(ann, 40, 50)
    x1, y1 = await viewer_point(ann, 120, 110)
    await ann.mouse.move(x0, y0)
    await ann.mouse.down()
    await ann.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    await ann.mouse.move(x1, y1, steps=4)
    await ann.mouse.up()
    await expect(ann.locator("#regions li")).to_have_count(1)
    await shot(ann, "11-mouse-box")

    # A polygon: press on its first corner and drag to the second, click the others, and click
    # the first corner again to close it.
    await ann.keyboard.press("g")
    corners = [(150, 150), (220, 160), (200, 230), (140, 210)]
    points = [await viewer_point(ann, x, y) for x, y in corners]
    await ann.mouse.move(*points[0])
    await ann.mouse.down()
    await ann.mouse.move(*points[1], steps=6)
    await ann.mouse.up()
    for px, py in points[2:]:
        await ann.mouse.click(px, py)
    await ann.mouse.click(*points[0])
    await expect(ann.locator("#regions li")).to_have_count(2)
    await expect(ann.locator("#regions li").nth(1)).to_contain_text("polygon of 4 points")

    # Edit: with drawing off, pick the box and drag it 20 px to the right.
    await ann.keyboard.press("g")  # drawing off
    bx, by = await viewer_point(ann, 80, 80)
    await ann.mouse.click(bx, by)
    await expect(ann.locator("#regions li.sel")).to_contain_text("box")
    tx, _ = await viewer_point(ann, 100, 80)
    await ann.mouse.move(bx, by)
    await ann.mouse.down()
    await ann.mouse.move((bx + tx) / 2, by, steps=4)
    await ann.mouse.move(tx, by, steps=4)
    await ann.mouse.up()
    ex, ey = await viewer_point(ann, 10, 10)
    await ann.mouse.click(ex, ey)  # click beside it: the edit is done (Annotorious reports it now)
    await expect(ann.locator("#regions li").first).to_contain_text(re.compile(r"box 6\d,"))

    # Delete: a third box, drawn and then removed with its delete button.
    await ann.keyboard.press("d")
    x0, y0 = await viewer_point(ann, 10, 200)
    x1, y1 = await viewer_point(ann, 40, 240)
    await ann.mouse.move(x0, y0)
    await ann.mouse.down()
    await ann.mouse.move(x1, y1, steps=6)
    await ann.mouse.up()
    await expect(ann.locator("#regions li")).to_have_count(3)
    await ann.keyboard.press("d")  # drawing off
    await ann.locator("#regions li").nth(2).get_by_role("button", name="delete").click()
    await expect(ann.locator("#regions li")).to_have_count(2)
    await shot(ann, "12-mouse-box-and-polygon")

    await ann.keyboard.press("Enter")  # crack, its severity the model's (minor)
    await moved_on(ann, frame)
    (label,) = [x for x in await ui.app.frame_labels(frame) if x.kind == "label"]
    assert (label.label, label.severity) == ("crack", "minor")
    (box,) = label.boxes
    # Dragged by the mouse, so within a few pixels of where the pointer put it.
    assert abs(box["x_min"] - 60) <= 3 and abs(box["y_min"] - 50) <= 3, box
    assert abs(box["x_max"] - 140) <= 3 and abs(box["y_max"] - 110) <= 3, box
    (polygon,) = label.polygons
    assert len(polygon["points"]) == 4
    for (x, y), (px, py) in zip(corners, polygon["points"], strict=True):
        assert abs(px - x) <= 3 and abs(py - y) <= 3, polygon
    no_errors(ann)
    await ann.context.close()


async def test_taxonomy_editor_publishes_and_shows_the_difference(ui: UiStack) -> None:
    """The QA owner edits a class's definition and a disposition, saves a draft, submits it and
    approves it; the taxonomy service records the QA owner (their own token travelled, not a
    service's) and the side-by-side diff shows both changes."""
    quinn = await ui.login(QUINN)
    await expect(quinn.locator("nav.top")).to_contain_text("Taxonomy")
    await quinn.goto(f"/taxonomy?product={EDITED_PRODUCT}")
    await expect(quinn.locator("body")).to_have_attribute("data-ready", "taxonomy")
    await expect(quinn.locator("#loaded")).to_have_text("editing a copy of v1")
    await expect(quinn.locator("#version")).to_have_value("2")
    crack = quinn.locator("fieldset[data-class=crack]")
    await crack.locator("textarea[data-path='classes.1.definition']").fill("a crack longer than 2 mm")
    await quinn.select_option("select[data-path='disposition.default.major']", "hold")
    await quinn.fill("#notes", "cracks are measured from 2 mm; major defects are held")

    # A named region drawn with the mouse on a reference frame.
    await quinn.locator("#reference summary").click()
    await quinn.fill("#ref-frame", ui.gold)
    await quinn.click("#ref-open")
    await quinn.wait_for_function("ref && ref.size")
    await quinn.locator("#ref-viewer").scroll_into_view_if_needed()
    corners = await quinn.evaluate(
        """() => [[64, 64], [192, 128]].map(([x, y]) => {
          const item = ref.viewer.world.getItemAt(0);
          const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
          const box = document.getElementById("ref-viewer").getBoundingClientRect();
          return [box.left + p.x, box.top + p.y];
        })"""
    )
    (x0, y0), (x1, y1) = corners
    await quinn.mouse.move(x0, y0)
    await quinn.mouse.down()
    await quinn.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    await quinn.mouse.move(x1, y1, steps=4)
    await quinn.mouse.up()
    await expect(quinn.locator("input[data-path='regions.0.name']")).to_have_value("region_1")
    rect = [
        float(await quinn.locator(f"input[data-path='regions.0.rect.{k}']").input_value()) for k in range(4)
    ]
    assert rect == pytest.approx([0.25, 0.25, 0.75, 0.5], abs=0.02), rect
    await quinn.fill("input[data-path='regions.0.name']", "centre")
    await shot(quinn, "13-taxonomy-editor")
    await quinn.click("#save")
    await expect(quinn.locator("#flash")).to_have_text("saved draft v2")
    await quinn.click("#submit-review")
    await expect(quinn.locator("#draft-state")).to_have_text("draft state: in_review")
    await quinn.click("#approve")
    await expect(quinn.locator("#draft-state")).to_have_text("published v2")

    published = await ui.taxonomy.app.get(EDITED_PRODUCT)
    assert ui.svc.ctx.db is not None
    subject = (await PgUserStore(ui.svc.ctx.db).get_user(QUINN)).id  # the QA owner, not a service
    assert (published.version, published.author, published.approved_by) == ("2", subject, subject)
    diff = quinn.locator("#diff")
    await expect(diff.locator(".path", has_text="classes.crack.definition")).to_have_count(1)
    await expect(diff.locator(".new", has_text="a crack longer than 2 mm")).to_have_count(1)
    await expect(diff.locator(".old", has_text=DEFINITIONS["crack"])).to_have_count(1)
    await expect(diff.locator(".path", has_text="disposition.default.major")).to_have_count(1)
    await expect(diff.locator(".new", has_text="centre")).not_to_have_count(0)
    await expect(quinn.locator("#summary")).to_contain_text("redefined (labels get a second look): crack")
    await shot(quinn, "14-taxonomy-diff")
    no_errors(quinn)
    await quinn.context.close()


async def test_qa_owner_assigns_a_frame_while_the_queue_updates(ui: UiStack) -> None:
    frame = await ui.frame("pit", station="st5")
    quinn = await ui.login(QUINN)
    await quinn.goto("/queue?poll=300")
    row = quinn.locator(f"#items tr[data-frame='{frame}']")
    box = row.locator("input.assignee")
    await box.click()
    await quinn.keyboard.type(BOB[:3])  # half-typed when the next update lands
    updates = int(await quinn.locator("#updated").inner_text())
    await ui.frame("stain", station="st5")
    await expect(quinn.locator("#updated")).not_to_have_text(str(updates))
    await expect(quinn.locator("#items tr[data-frame]")).not_to_have_count(0)
    await expect(box).to_have_value(BOB[:3])
    await expect(box).to_be_focused()
    await quinn.keyboard.type(BOB[3:])
    await row.get_by_role("button", name="assign").click()
    await expect(quinn.locator("#flash")).to_contain_text(f"assigned to {BOB}")
    (item,) = await ui.app.review_queue(frame_id=frame, limit=1)
    assert item.assigned_to == BOB
    await expect(row).to_contain_text(BOB)
    no_errors(quinn)
    await quinn.context.close()
