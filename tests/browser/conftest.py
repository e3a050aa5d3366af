"""Browser tests of the labeling UI: Debian's chromium driven by Playwright against the real
labeling service (in this event loop, on the session's PostgreSQL, NATS and S3), with synthetic
frames in S3 and results recorded through the app as the result consumer would.

The browser is /usr/bin/chromium from apt (`apt-get install chromium`), never one downloaded by
`playwright install`; without it these tests fail and say so (a UI that is not tested is not
known to work). Screenshots go to reports/ui/.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from playwright.async_api import Browser, Page, async_playwright, expect

from linesight.common.events import new_meta
from linesight.common.identity import Grant, Principal, Role
from linesight.common.identity.users import PgUserStore
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.common.storage import BUCKET_FRAMES, BUCKET_HEATMAPS, ObjectStore, S3Config
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.service import setup
from linesight.labeling.store.workflow import TaxonomyRow
from linesight.taxonomy.app.catalogue import TaxonomyApp
from linesight.taxonomy.service import bundled_dir
from linesight.taxonomy.service import setup as taxonomy_setup
from linesight.vision.data.imageio import encode_png
from linesight.vision.data.synth import BatchStyle, StationStyle, capture_part, render_part

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "reports" / "ui"
PLANT = f"ui{uuid.uuid4().hex[:8]}"
PRODUCT = f"tile{uuid.uuid4().hex[:6]}"
CLASSES = ["scratch", "crack", "pit", "stain"]  # the page numbers them after "good": 2..5
EDITED_PRODUCT = PRODUCT + "e"  # the taxonomy editor's test publishes here, leaving PRODUCT as it is
DEFINITIONS = {c: f"{c}: the test taxonomy's definition of a {c}" for c in CLASSES}
PASSWORD = "correct horse battery staple"
_RUN = uuid.uuid4().hex[:6]  # the session's user table is shared with other test modules
ANN, BOB, QUINN, OLGA = (f"{n}{_RUN}" for n in ("ann", "bob", "quinn", "olga"))
USERS = {ANN: Role.LABELER, BOB: Role.REVIEWER, QUINN: Role.QA_OWNER, OLGA: Role.LINE_OPERATOR}
FRAME_PX = 256
# The machine these run on is shared and often loaded: a page's 1 MB of viewer scripts can take
# seconds to parse there, so an expectation waits up to this long (a real failure still fails).
expect.set_options(timeout=20_000)


def taxonomy_document(product: str, version: str, gallery: dict[str, list[dict[str, str]]]) -> str:
    """A published taxonomy of CLASSES with definitions and gallery frames (the bundled default's
    settings otherwise)."""
    doc = yaml.safe_load((bundled_dir() / "default.yaml").read_text())
    template = doc["classes"][0]
    doc["product"], doc["version"] = product, version
    doc["classes"] = [
        {
            **template,
            "name": c,
            "description": f"a {c}",
            "definition": DEFINITIONS[c],
            "gallery": gallery.get(c, []),
        }
        for c in CLASSES
    ]
    doc["disposition"] = {"default": {"minor": "rework", "major": "reject", "critical": "reject"}}
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class UiStack:
    svc: RunningService[LabelingApp]
    taxonomy: RunningService[TaxonomyApp]
    store: ObjectStore
    base_url: str
    browser: Browser
    seed: int = 0
    gold: str = ""  # the frame the published taxonomy shows as a gold example of "crack"

    @property
    def app(self) -> LabelingApp:
        return self.svc.app

    async def frame(
        self, label: str = "scratch", station: str = "st1", confidence: float = 0.45, queued: bool = True
    ) -> str:
        """Put a synthetic frame and its heatmap in S3 and record the model's result for it (a
        low-confidence call enters the review queue; a confident one does not). Returns the frame id."""
        self.seed += 1
        rng = np.random.default_rng(self.seed)
        part = render_part(FRAME_PX, "brushed", label, self.seed, BatchStyle.draw(rng))
        image, mask = capture_part(part, StationStyle.draw(rng), self.seed)
        frame_id = uuid.uuid4().hex
        key = f"{PLANT}/{frame_id}.png"
        self.store.put_bytes(BUCKET_FRAMES, key, encode_png(image), content_type="image/png")
        self.store.put_bytes(BUCKET_HEATMAPS, key, encode_png(mask), content_type="image/png")
        ys, xs = np.nonzero(mask > 127)
        regions = (
            [
                common_pb2.Region(
                    x_min=int(xs.min()),
                    y_min=int(ys.min()),
                    x_max=int(xs.max()),
                    y_max=int(ys.max()),
                    peak_score=0.8,
                )
            ]
            if len(xs)
            else []
        )
        result = events_pb2.InspectionResult(
            meta=new_meta("inference", correlation_id=frame_id),
            frame_id=frame_id,
            capture=common_pb2.CaptureMeta(
                station=common_pb2.StationRef(plant=PLANT, line="line1", station=station),
                part_id="P-" + frame_id[:6],
            ),
            verdict=common_pb2.VERDICT_DEFECT,
            defect_class=label,
            severity=common_pb2.SEVERITY_MINOR,
            confidence=confidence,
            disposition=common_pb2.DISPOSITION_REWORK,
            model_version="m-ui-1",
            taxonomy_version="1",
            class_scores=[
                common_pb2.ClassScore(defect_class=c, probability=0.7 if c == label else 0.1) for c in CLASSES
            ],
            regions=regions,
            image=common_pb2.ObjectRef(bucket=BUCKET_FRAMES, key=key),
            heatmap=common_pb2.ObjectRef(bucket=BUCKET_HEATMAPS, key=key),
            latency_ms=40.0,
        )
        outcome = await self.app.record_result(result)
        assert outcome.queued is queued, outcome
        return frame_id

    async def login(self, user: str) -> Page:
        """A fresh browser context (its own cookies) logged in through the login form."""
        context = await self.browser.new_context(
            base_url=self.base_url, viewport={"width": 1400, "height": 900}
        )
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors  # type: ignore[attr-defined]
        await page.goto("/login?next=/queue")
        await page.fill("input[name=username]", user)
        await page.fill("input[name=password]", PASSWORD)
        await page.press("input[name=password]", "Enter")
        await page.wait_for_url("**/queue")
        return page


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium: apt-get install chromium"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
async def ui(stack_settings: Settings, chromium: Path) -> AsyncIterator[UiStack]:
    settings = stack_settings.model_copy(update={"plant": PLANT, "product": PRODUCT})
    store = ObjectStore(S3Config.from_settings(settings))
    store.ensure_buckets()
    # The taxonomy service seeds its bundled default under its configured product: another
    # product, so the seed never touches this module's taxonomy.
    taxonomy_settings = settings.model_copy(update={"product": PRODUCT + "seed"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LINESIGHT_LABELING_AUDIT_SHARE", "0")
        async with (
            service_running("taxonomy", taxonomy_setup, settings=taxonomy_settings) as taxonomy,
            service_running("labeling", setup, settings=settings) as svc,
        ):
            await svc.app.on_taxonomy(
                TaxonomyRow(
                    product=PRODUCT,
                    version="1",
                    previous_version="",
                    classes=CLASSES,
                    changed_classes=[],
                    event_id="",
                )
            )
            assert svc.ctx.db is not None
            users = PgUserStore(svc.ctx.db)
            for name, role in USERS.items():
                await users.add_user(name, password=PASSWORD, grants=[Grant(role, PLANT)])
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    stack = UiStack(
                        svc, taxonomy, store, f"http://127.0.0.1:{settings.http_ports['labeling']}", browser
                    )
                    await publish_test_taxonomies(stack)
                    yield stack
                finally:
                    await browser.close()


async def publish_test_taxonomies(stack: UiStack) -> None:
    """Publish PRODUCT's taxonomy (version 1, as labeling already holds it) with definitions and a
    gold example and a hard negative of "crack", and EDITED_PRODUCT's first version."""
    stack.gold = await stack.frame("crack", confidence=0.97, queued=False)
    look_alike = await stack.frame("scratch", confidence=0.97, queued=False)
    gallery = {
        "crack": [
            {"frame_id": stack.gold, "kind": "gold", "note": "hairline crack"},
            {"frame_id": look_alike, "kind": "hard_negative", "note": "a scratch, not a crack"},
        ]
    }
    owner = Principal(QUINN, QUINN, "user", (Grant(Role.QA_OWNER, PLANT),))
    for product in (PRODUCT, EDITED_PRODUCT):
        await stack.taxonomy.app.publish_directly(owner, taxonomy_document(product, "1", gallery), product)


def no_errors(page: Any) -> None:
    """The page's scripts raised nothing (a broken script leaves a page that looks fine)."""
    assert page.errors == [], page.errors
